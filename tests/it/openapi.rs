//! docs/openapi.json and the router agree: the same (method, path) pairs with the same query
//! parameters, and every route, called on a live server with real path values and a valid
//! request, reaches its handler and answers a status its operation documents.

use crate::common;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

fn spec() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    spec
}

/// Resolves a `$ref` inside the spec.
fn resolve<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => r
            .trim_start_matches("#/")
            .split('/')
            .fold(spec, |node, part| &node[part]),
        None => v,
    }
}

/// (METHOD, path) → (query parameter names, documented statuses).
type Operations = BTreeMap<(String, String), (BTreeSet<String>, BTreeSet<u16>)>;

fn spec_operations(spec: &Value) -> Operations {
    let mut out = BTreeMap::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        let common = item["parameters"].as_array().cloned().unwrap_or_default();
        for method in ["get", "head", "put", "post", "delete", "patch"] {
            let Some(op) = item.get(method) else { continue };
            let own = op["parameters"].as_array().cloned().unwrap_or_default();
            let query = common
                .iter()
                .chain(own.iter())
                .map(|p| resolve(spec, p))
                .filter(|p| p["in"] == "query")
                .map(|p| p["name"].as_str().unwrap().to_string())
                .collect();
            let statuses = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .filter_map(|k| k.parse().ok())
                .collect();
            out.insert((method.to_uppercase(), path.clone()), (query, statuses));
        }
    }
    out
}

#[test]
fn spec_lists_exactly_the_router_routes_and_their_query_parameters() {
    let spec = spec();
    let ops = spec_operations(&spec);
    let router: BTreeSet<(String, String)> = shardbox::http::routes()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    let documented: BTreeSet<(String, String)> = ops.keys().cloned().collect();
    let missing: Vec<_> = router.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&router).collect();
    assert!(
        missing.is_empty(),
        "routes missing from docs/openapi.json: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "docs/openapi.json lists routes the router lacks: {extra:?}"
    );
    for (method, path, query) in shardbox::http::routes() {
        let served: BTreeSet<String> = query.iter().map(|q| q.to_string()).collect();
        let (documented, _) = &ops[&(method.to_string(), path.to_string())];
        assert_eq!(
            &served, documented,
            "{method} {path}: the query parameters the route takes vs the spec"
        );
    }
}

#[test]
fn every_operation_documents_the_auth_and_rate_limit_answers() {
    let spec = spec();
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer"]["scheme"], "bearer",
        "the bearer scheme is described"
    );
    for ((method, path), (_, statuses)) in spec_operations(&spec) {
        if path == "/healthz" || path == "/readyz" || path == "/" {
            continue;
        }
        for s in [401, 403, 429] {
            assert!(
                statuses.contains(&s),
                "{method} {path}: {s} is not documented"
            );
        }
    }
}

#[test]
fn idempotency_key_is_documented_exactly_on_the_routes_that_take_it() {
    let spec = spec();
    let takes_key = |op: &Value| {
        op["parameters"].as_array().is_some_and(|ps| {
            ps.iter()
                .map(|p| resolve(&spec, p))
                .any(|p| p["in"] == "header" && p["name"] == "Idempotency-Key")
        })
    };
    let mut documented = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if takes_key(op) {
                documented.insert((method.to_uppercase(), path.clone()));
                for s in ["409", "422"] {
                    assert!(
                        op["responses"].get(s).is_some(),
                        "{method} {path}: {s} undocumented"
                    );
                }
            }
        }
    }
    let served: BTreeSet<(String, String)> = shardbox::http::idempotent_routes()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(served.len(), 4, "enqueue, append, batch write, incr");
    assert_eq!(documented, served);
}

/// A valid request for each route: path values that exist and a body the handler accepts.
fn request_for(method: &str, template: &str, job: &str) -> (String, String) {
    let path = template
        .replace("{ns}", "app")
        .replace("{key}", "some/key")
        .replace("{q}", "emails")
        .replace("{id}", job)
        .replace("{stream}", "clicks")
        .replace("{name}", "nightly");
    let body = match (method, template) {
        ("PUT", "/v1/kv/{ns}/{key}") | ("PUT", "/v1/cache/{ns}/{key}") => "v",
        ("POST", "/v1/kv/{ns}:incr") => r#"{"key":"n","by":1}"#,
        ("POST", "/v1/kv/{ns}:batchGet") => r#"{"keys":["some/key"]}"#,
        ("POST", "/v1/kv/{ns}:batchWrite") => {
            r#"{"ops":[{"op":"put","key":"b","value_b64":"eA=="}]}"#
        }
        ("POST", "/v1/cache/{ns}:purge") => r#"{"all":true}"#,
        ("POST", "/v1/cache/{ns}:fillError") => r#"{"key":"some/key","token":"0"}"#,
        ("PUT", "/v1/queues/{q}") => r#"{"max_attempts":5}"#,
        ("POST", "/v1/queues/{q}/jobs") => r#"{"payload":1}"#,
        ("POST", "/v1/queues/{q}/claim") => r#"{"max":1}"#,
        ("POST", t) if t.starts_with("/v1/queues/{q}/jobs/{id}/") => r#"{"lease_token":"00"}"#,
        ("POST", "/v1/queues/{q}/dead:requeue") => r#"{"all":true}"#,
        ("PUT", "/v1/streams/{stream}") => r#"{"bucket":"1h"}"#,
        ("POST", "/v1/streams/{stream}/events") => r#"{"data":{"x":1}}"#,
        ("PUT", "/v1/schedules/{name}") => r#"{"cron":"0 6 * * *","queue":"emails","payload":1}"#,
        ("PUT", "/v1/changes/cursors/{name}") => r#"{"position":"now"}"#,
        ("POST", "/v1/admin/backup") => {
            return (path, serde_json::json!({ "out": backup_dir() }).to_string());
        }
        _ => "",
    };
    let query = match (method, template) {
        ("GET", "/v1/streams/{stream}/counts") => "?from=0&step=30d",
        ("DELETE", "/v1/streams/{stream}/events") => "?before=0",
        ("DELETE", "/v1/kv/{ns}") => "?prefix=zz/",
        ("PUT", "/v1/cache/{ns}/{key}") => "?ttl=60s",
        ("GET", "/v1/queues/{q}/jobs") => "?state=ready",
        ("DELETE", "/v1/queues/{q}/jobs") => "?state=dead",
        ("GET", "/v1/changes") => "?after=now",
        _ => "",
    };
    (format!("{path}{query}"), body.to_string())
}

/// Where the backup route writes (removed at the end).
fn backup_dir() -> String {
    std::env::temp_dir()
        .join(format!("shardbox-openapi-backup-{}", std::process::id()))
        .display()
        .to_string()
}

#[tokio::test]
async fn every_route_reaches_its_handler_with_a_documented_status() {
    let spec = spec();
    let ops = spec_operations(&spec);
    let s = common::TestServer::start().await;
    let mut c = s.client().await;
    // The resources the routes name exist.
    let job = c
        .send("POST", "/v1/queues/emails/jobs", &[], r#"{"payload":0}"#)
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    for (method, path, body) in [
        ("PUT", "/v1/streams/clicks", r#"{"bucket":"1h"}"#),
        ("PUT", "/v1/kv/app/some/key", "v"),
        (
            "PUT",
            "/v1/schedules/nightly",
            r#"{"cron":"0 6 * * *","queue":"emails","payload":1}"#,
        ),
    ] {
        let r = c.send(method, path, &[], body).await;
        assert!(r.status < 300, "{method} {path}: {}", r.status);
    }
    let mut deletes = Vec::new();
    for (method, template, _) in shardbox::http::routes() {
        // Deletes last, so they do not remove what other routes need.
        if method == "DELETE" {
            deletes.push((method, template));
            continue;
        }
        check(&mut c, &ops, method, template, &job).await;
    }
    for (method, template) in deletes {
        check(&mut c, &ops, method, template, &job).await;
    }
    s.stop().await;
    let _ = std::fs::remove_dir_all(backup_dir());
}

async fn check(c: &mut common::Client, ops: &Operations, method: &str, template: &str, job: &str) {
    let (path, body) = request_for(method, template, job);
    let ct = if body.starts_with('{') {
        "application/json"
    } else {
        "text/plain"
    };
    let r = c
        .send(method, &path, &[("content-type", ct)], body.clone())
        .await;
    let (_, documented) = &ops[&(method.to_string(), template.to_string())];
    let detail = if method == "HEAD" {
        String::new()
    } else {
        r.text()
    };
    assert!(
        documented.contains(&r.status),
        "{method} {path} {body} answered {} (documented: {documented:?}): {detail}",
        r.status
    );
    assert!(
        r.status < 400 || r.status == 409 || r.status == 404,
        "{method} {path} {body}: a valid request answered {}: {detail}",
        r.status
    );
    // Every operation refuses an unknown query parameter with a documented 400.
    let sep = if path.contains('?') { '&' } else { '?' };
    let r2 = c
        .send(
            method,
            &format!("{path}{sep}bogus=1"),
            &[("content-type", ct)],
            body.clone(),
        )
        .await;
    assert_eq!(r2.status, 400, "{method} {path} with ?bogus=1");
    assert!(
        documented.contains(&400),
        "{method} {template}: 400 is not documented"
    );
    if r.status == 404 && method != "HEAD" {
        assert!(
            !detail.contains("no such endpoint"),
            "{method} {path}: {detail}"
        );
    }
}
