//! docs/openapi.json against the server, the way a generated client meets it: schemathesis
//! (pinned, installed by `scripts/install-schemathesis.sh`) makes requests from the file — valid
//! ones, which must be accepted, and ones the file forbids, which must be refused — and checks
//! every answer's status, content type, headers and body against the file. Every failure it
//! reports must be one of the rules [`EXPLAINED`] lists: rules that depend on the store's state
//! or join two parameters, which OpenAPI 3.0 cannot state (api.md states them).

use crate::common;

use common::TestServer;
use std::path::PathBuf;
use std::process::Command;

/// The server's answers to schema-valid requests that only a rule OpenAPI 3.0 cannot state
/// refuses, by a piece of the error message, with the rule.
const EXPLAINED: &[(&str, &str)] = &[
    (
        "deleting with an empty prefix deletes the whole namespace",
        "DELETE /v1/kv/{ns} needs a non-empty prefix or all=true",
    ),
    (
        "give after or cursor, not both",
        "/v1/changes: one of two parameters",
    ),
    (
        "a cursor returned by a previous listing",
        "list cursors are opaque: only a page's `next` is one",
    ),
    (
        "a cursor from a previous listing",
        "list cursors are opaque: only a page's `next` is one",
    ),
    ("need from < to", "counts: from before to"),
    (
        "steps; at most",
        "counts: at most 10,000 steps between from and to",
    ),
    (
        "If-Match or If-None-Match, not both",
        "PUT /v1/kv: two headers that exclude each other",
    ),
    (
        "older than the stream's retention",
        "an event's ts depends on the clock and the stream's retention",
    ),
    (
        "ahead of the server clock",
        "an event's ts depends on the clock (future_skew_max_ms)",
    ),
    ("is backwards", "a cron range a-b needs a <= b"),
    (
        "precondition failed",
        "If-Match / if_revision against the stored revision (412)",
    ),
    (
        "give delay or run_at, not both",
        "delay and run_at exclude each other",
    ),
    (
        "per entry (cache_tags_max)",
        "Cache-Tag and ?tags= together hold at most cache_tags_max tags",
    ),
    (
        "If-Match must be",
        "schemathesis sends an empty If-Match for one left out; an empty condition is refused, \
         not taken as none",
    ),
];

/// The file as this test's server serves it. Left out: `follow` (an SSE or NDJSON follow never
/// ends, which a request-response tool cannot read; tests/it/events_api.rs and feed.rs test
/// it), `Idempotency-Key` (schemathesis sends one fixed key with different bodies, which the
/// server rightly refuses 422; tests/it/idempotency.rs tests it), and `POST /v1/admin/backup`
/// (it makes directories wherever the test's user may). Claim waits are bounded by the test
/// server's `claim_wait_max_ms` (1 s, so long polls stay short) instead of the default 60 s.
fn adapt(spec: &mut serde_json::Value) {
    let paths = spec["paths"].as_object_mut().expect("paths");
    paths.remove("/v1/admin/backup");
    for item in paths.values_mut() {
        for op in item.as_object_mut().expect("path item").values_mut() {
            if let Some(params) = op.get_mut("parameters").and_then(|p| p.as_array_mut()) {
                params.retain(|p| {
                    let name = p["name"].as_str().unwrap_or("");
                    let shared = p["$ref"].as_str().unwrap_or("");
                    name != "follow" && !shared.ends_with("/IdempotencyKey")
                });
            }
        }
    }
    spec["components"]["schemas"]["ClaimWait"]["pattern"] =
        serde_json::json!("^(?:0(?:ms|s)?|[1-9][0-9]{0,2}ms|1000ms|1s?)$");
}

/// The failures in schemathesis's report: (operation, the block of text about it).
fn failures(report: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut op: Option<String> = None;
    let mut block = String::new();
    for line in report.lines() {
        let t = line.trim();
        let is_header = t.starts_with("___") && t.ends_with("___") && t.len() > 10;
        if is_header || t.starts_with("=====") {
            if let Some(o) = op.take() {
                out.push((o, std::mem::take(&mut block)));
            }
            if is_header {
                op = Some(t.trim_matches('_').trim().to_string());
            }
            continue;
        }
        if op.is_some() {
            block.push_str(line);
            block.push('\n');
        }
    }
    if let Some(o) = op {
        out.push((o, block));
    }
    out
}

/// The server's answer in one failure case of a block: the lines from `[<status>] …:` up to
/// `Reproduce with:` (the request that follows may hold any text).
fn answer(case: &str) -> String {
    case.lines()
        .skip_while(|l| !(l.trim_start().starts_with('[') && l.trim_end().ends_with(':')))
        .take_while(|l| !l.trim_start().starts_with("Reproduce with"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_generated_from_openapi_json_is_never_surprised() {
    let Some(st) = common::installed_tool("install-schemathesis.sh", &[], "REQUIRE_SCHEMATHESIS")
    else {
        eprintln!("SKIPPED: schemathesis could not be installed (needs python3 and PyPI)");
        return;
    };
    let s = TestServer::start_with(|c| c.queue.claim_wait_max_ms = 1000).await;
    let tmp = tempfile::tempdir().unwrap();
    let doc = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(doc).unwrap()).unwrap();
    adapt(&mut spec);
    let file = tmp.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec(&spec).unwrap()).unwrap();
    let url = s.url("");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(st)
            .args([
                "run",
                "--checks",
                "all",
                "--max-examples",
                "15",
                "--seed",
                "1",
            ])
            .args([
                "--continue-on-failure",
                "--request-timeout",
                "15",
                "--no-color",
            ])
            // Its section headers are as wide as this says: wide enough to be found.
            .env("COLUMNS", "200")
            .arg("--url")
            .arg(url.trim_end_matches('/'))
            .arg(&file)
            .current_dir(tmp.path())
            .output()
            .expect("run schemathesis")
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        report.contains("test cases") || report.contains("generated"),
        "schemathesis did not run: {report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A failed run must show its failures to this parser (else a format change would pass).
    let found = failures(&report);
    assert!(
        out.status.success() || !found.is_empty(),
        "schemathesis failed ({}) and no failure block was read from its report: {report}",
        out.status
    );
    let mut unexplained = Vec::new();
    for (op, block) in found {
        // Every check that failed in the block must be an ST202 whose answer an explained rule
        // gives.
        let checks: Vec<&str> = block
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- "))
            .filter(|l| l.starts_with("ST") || l.contains("error") || l.contains("Error"))
            .collect();
        let explained = !checks.is_empty()
            && checks.iter().all(|c| c.starts_with("ST202"))
            && block.split("- ST202").skip(1).all(|case| {
                let a = answer(case);
                EXPLAINED.iter().any(|(m, _)| a.contains(m))
            });
        if !explained {
            unexplained.push(format!("{op}\n{block}"));
        }
    }
    assert!(
        unexplained.is_empty(),
        "{} unexplained schemathesis failures:\n{}",
        unexplained.len(),
        unexplained.join("\n")
    );
    assert!(
        report.contains("Stateful") || report.contains("Fuzzing"),
        "no fuzzing phase ran: {report}"
    );
    eprintln!(
        "{}",
        report.lines().rev().take(12).collect::<Vec<_>>().join("\n")
    );
    s.stop().await;
}
