//! `shardbox kv|queue|events|cache|status` — the binary as a client — against a real server, the
//! way a shell script uses it: what it prints, and the exit codes a script branches on
//! (0 done, 3 not found or nothing to claim, 4 a precondition or lease did not hold,
//! 5 unavailable, 1 any other refusal).

use crate::common;

use common::spawn::{spawn_shardbox, KillOnDrop};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

/// Runs `shardbox ARGS` against `addr` with `env`: (exit code, stdout, stderr).
fn run(
    addr: &str,
    env: &[(&str, &str)],
    args: &[&str],
    stdin: Option<&[u8]>,
) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardbox"));
    cmd.args(args)
        .env("SHARDBOX_SERVER", addr)
        .env_remove("SHARDBOX_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run shardbox");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn server(env: &[(String, String)]) -> (tempfile::TempDir, KillOnDrop, SocketAddr) {
    let tmp = tempfile::tempdir().unwrap();
    let (child, addr) = spawn_shardbox(&tmp.path().join("data"), env).expect("start shardbox");
    (tmp, KillOnDrop(child), addr)
}

#[test]
fn every_domain_from_the_shell_with_exit_codes_a_script_can_use() {
    let (_tmp, _child, addr) = server(&[]);
    let url = format!("http://{addr}");
    let sb = |args: &[&str]| run(&url, &[], args, None);

    // KV: a value comes back exactly as stored; a missing key is 3, a failed precondition 4.
    assert_eq!(
        sb(&["kv", "put", "app", "user/42", "{\"name\":\"ada\"}"]).1,
        "revision 1\n"
    );
    assert_eq!(
        sb(&["kv", "get", "app", "user/42"]),
        (0, "{\"name\":\"ada\"}".into(), String::new())
    );
    let (code, _, err) = sb(&["kv", "get", "app", "user/43"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("not_found"), "{err}");
    let (code, _, err) = sb(&["kv", "put", "app", "user/42", "x", "--if-revision", "7"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("revision is 1"), "{err}");
    assert_eq!(sb(&["kv", "put", "app", "user/42", "y", "--create"]).0, 4);
    assert_eq!(
        sb(&["kv", "put", "app", "user/42", "z", "--if-revision", "1"]).1,
        "revision 2\n"
    );
    // `-` reads stdin, binary included; a name that needs escaping in a URL.
    let bytes = [0u8, 159, 146, 150, b'\n'];
    assert_eq!(
        run(
            &url,
            &[],
            &["kv", "put", "app", "odd key?#", "-"],
            Some(&bytes)
        )
        .0,
        0
    );
    let out = Command::new(env!("CARGO_BIN_EXE_shardbox"))
        .args(["kv", "get", "app", "odd key?#"])
        .env("SHARDBOX_SERVER", &url)
        .output()
        .unwrap();
    assert_eq!(out.stdout, bytes);
    let (_, json, _) = sb(&["kv", "get", "app", "user/42", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (v["value"].as_str(), v["revision"].as_u64()),
        (Some("z"), Some(2))
    );
    for i in 0..5 {
        sb(&["kv", "put", "app", &format!("page/{i}"), "v"]);
    }
    // Listing follows the server's cursor across pages, up to --limit.
    assert_eq!(
        sb(&["kv", "ls", "app", "--prefix", "page/"]).1,
        "page/0\npage/1\npage/2\npage/3\npage/4\n"
    );
    assert_eq!(
        sb(&["kv", "ls", "app", "--prefix", "page/", "--limit", "2"]).1,
        "page/0\npage/1\n"
    );
    // A key a newline would split is listed as a JSON string.
    sb(&["kv", "put", "app", "page/a\nb", "v"]);
    assert_eq!(
        sb(&["kv", "ls", "app", "--prefix", "page/a"]).1,
        "\"page/a\\nb\"\n"
    );
    assert_eq!(sb(&["kv", "incr", "app", "hits", "--by", "5"]).1, "5\n");
    // With an idempotency key a retried increment adds once.
    for _ in 0..2 {
        let (_, v, _) = sb(&["kv", "incr", "app", "once", "--idempotency-key", "inc-1"]);
        assert_eq!(v, "1\n");
    }
    assert_eq!(sb(&["kv", "incr", "app", "hits", "--by", "-2"]).1, "3\n");
    assert_eq!(sb(&["kv", "del", "app", "user/42"]).0, 0);
    assert_eq!(sb(&["kv", "del", "app", "user/42"]).0, 3);

    // A queue worker in shell: enqueue, claim (id, lease token, payload), ack; nothing left is 3.
    let (code, id, _) = sb(&["queue", "enqueue", "mail", "{\"to\":\"a@example.com\"}"]);
    assert_eq!(code, 0);
    let (code, line, _) = sb(&["queue", "claim", "mail", "--lease", "30s"]);
    assert_eq!(code, 0);
    let parts: Vec<&str> = line.trim_end().splitn(3, ' ').collect();
    assert_eq!(parts[0], id.trim());
    assert_eq!(parts[2], "{\"to\":\"a@example.com\"}");
    let (code, _, err) = sb(&["queue", "ack", "mail", parts[0], "not-the-token"]);
    assert_eq!(code, 4, "a stale lease: {err}");
    assert_eq!(sb(&["queue", "ack", "mail", parts[0], parts[1]]).0, 0);
    assert_eq!(
        sb(&["queue", "claim", "mail"]),
        (3, String::new(), String::new())
    );
    // A payload goes byte for byte: key order and a number wider than a float kept.
    let exact = r#"{"b":1,"a":123456789012345678901234}"#;
    sb(&["queue", "enqueue", "mail", exact]);
    let (_, line, _) = sb(&["queue", "claim", "mail"]);
    let parts: Vec<&str> = line.trim_end().splitn(3, ' ').collect();
    assert_eq!(parts[2], exact);
    assert_eq!(sb(&["queue", "ack", "mail", parts[0], parts[1]]).0, 0);
    // A payload that is not JSON goes as a string; nack --dead makes a dead job.
    sb(&["queue", "enqueue", "mail", "plain text"]);
    let (_, line, _) = sb(&["queue", "claim", "mail"]);
    let parts: Vec<&str> = line.trim_end().splitn(3, ' ').collect();
    assert_eq!(parts[2], "\"plain text\"");
    assert_eq!(
        sb(&[
            "queue",
            "nack",
            "mail",
            parts[0],
            parts[1],
            "--error",
            "smtp down",
            "--dead"
        ])
        .0,
        0
    );
    let (_, stats, _) = sb(&["queue", "stats", "mail"]);
    assert!(
        stats.starts_with("mail ready=0 ") && stats.contains(" dead=1 "),
        "{stats}"
    );
    // A retried enqueue with the same idempotency key is the first job, not a second.
    let enqueue = [
        "queue",
        "enqueue",
        "once",
        "1",
        "--idempotency-key",
        "job-1",
    ];
    let (first, again) = (sb(&enqueue).1, sb(&enqueue).1);
    assert_eq!(first, again);
    // Every queue, one line each.
    let (_, all, _) = sb(&["queue", "stats"]);
    let names: Vec<&str> = all.lines().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(names, ["mail", "once"], "{all}");
    assert!(all.contains("once ready=1 "), "{all}");

    // Events: append, read back a range; a follower prints new events as they come.
    let (code, id, _) = sb(&[
        "events",
        "append",
        "clicks",
        "{\"page\":\"/\"}",
        "--type",
        "view",
    ]);
    assert_eq!(code, 0);
    let (_, range, _) = sb(&["events", "range", "clicks"]);
    let fields: Vec<&str> = range.trim_end().splitn(4, ' ').collect();
    assert_eq!(
        (fields[0], fields[2], fields[3]),
        (id.trim(), "view", "{\"page\":\"/\"}")
    );
    let mut tail = Command::new(env!("CARGO_BIN_EXE_shardbox"))
        .args(["events", "tail", "clicks", "--after", "0-0"])
        .env("SHARDBOX_SERVER", &url)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with(id.trim()), "{first}");
    let (_, id2, _) = sb(&["events", "append", "clicks", "later"]);
    let second = lines.next().unwrap().unwrap();
    let _ = tail.kill();
    let _ = tail.wait();
    assert!(
        second.starts_with(&format!("{} ", id2.trim())) && second.ends_with(" - \"later\""),
        "`<id> <ts> <type> <data>`: {second}"
    );

    // Cache: a hit prints the value; a miss is 3 and leaves no fill lease held by the CLI.
    assert_eq!(
        sb(&[
            "cache",
            "put",
            "web",
            "home",
            "<h1>hi</h1>",
            "--ttl",
            "60s",
            "--tag",
            "home"
        ])
        .0,
        0
    );
    assert_eq!(sb(&["cache", "get", "web", "home"]).1, "<h1>hi</h1>");
    assert_eq!(sb(&["cache", "purge", "web", "--tag", "home"]).0, 0);
    assert_eq!(sb(&["cache", "get", "web", "home"]).0, 3);
    let miss = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-D",
            "-",
            &format!("{url}/v1/cache/web/home"),
        ])
        .output();
    if let Ok(miss) = miss {
        let head = String::from_utf8_lossy(&miss.stdout).to_lowercase();
        assert!(
            head.contains("x-cache-fill:") && !head.contains("x-cache-fill: pending"),
            "the next caller gets the fill lease: {head}"
        );
    }
    assert_eq!(
        sb(&["cache", "purge", "web"]).0,
        2,
        "neither --tag nor --all"
    );

    // Status, plain and JSON.
    let (code, status, _) = sb(&["status"]);
    assert_eq!(code, 0);
    assert!(
        status.lines().any(|l| l.starts_with("disk.free_bytes: ")),
        "{status}"
    );
    let (_, json, _) = sb(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["queues"].is_array(), "{v}");

    // Nobody listening: 5, and what to fix.
    let (code, _, err) = run("http://127.0.0.1:1", &[], &["kv", "get", "a", "b"], None);
    assert_eq!(code, 5);
    assert!(err.contains("cannot reach 127.0.0.1:1"), "{err}");
    let (code, _, err) = run(&format!("{url}/prefix"), &[], &["status"], None);
    assert_eq!(code, 2);
    assert!(err.contains("no path"), "{err}");
    let (code, _, err) = run("localhost:7070", &[], &["status"], None);
    assert_eq!(code, 2);
    assert!(err.contains("http://host:port"), "{err}");
}

#[test]
fn tokens_from_the_environment_or_a_file_and_https_with_a_ca_file() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let tokens = format!(
        "[{{name = \"ops\", sha256 = \"{}\", scopes = [\"read\", \"write\"]}}]",
        shardbox::tokens::hash_token("s3cret")
    );
    let env = common::env(&[
        ("SHARDBOX_TOKENS", &tokens),
        ("SHARDBOX_TLS_CERT", cert_path.to_str().unwrap()),
        ("SHARDBOX_TLS_KEY", key_path.to_str().unwrap()),
    ]);
    let (_tmp2, _child, addr) = server(&env);
    let url = format!("https://localhost:{}", addr.port());
    let ca = ("SHARDBOX_CA", cert_path.to_str().unwrap());

    let (code, _, err) = run(&url, &[], &["status"], None);
    assert_eq!(code, 2, "https without a CA to trust: {err}");
    assert!(err.contains("--ca"), "{err}");
    let (code, _, err) = run(&url, &[ca], &["kv", "put", "app", "k", "v"], None);
    assert_eq!(code, 1, "no token: {err}");
    assert!(err.contains("401 unauthorized"), "{err}");
    let (code, out, err) = run(
        &url,
        &[ca, ("SHARDBOX_TOKEN", "s3cret")],
        &["kv", "put", "app", "k", "v"],
        None,
    );
    assert_eq!((code, out.as_str()), (0, "revision 1\n"), "{err}");
    let file = tmp.path().join("token");
    std::fs::write(&file, "s3cret\n").unwrap();
    let (code, out, err) = run(
        &url,
        &[ca],
        &[
            "kv",
            "get",
            "app",
            "k",
            "--token-file",
            file.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!((code, out.as_str()), (0, "v"), "{err}");
    // A certificate the CA file does not vouch for is refused.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let other_path = tmp.path().join("other.pem");
    std::fs::write(&other_path, other.cert.pem()).unwrap();
    let (code, _, err) = run(
        &url,
        &[
            ("SHARDBOX_CA", other_path.to_str().unwrap()),
            ("SHARDBOX_TOKEN", "s3cret"),
        ],
        &["kv", "get", "app", "k"],
        None,
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("TLS"), "{err}");
}
