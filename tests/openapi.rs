//! docs/openapi.json and the router agree: the same (method, path) pairs, and every one of them
//! reaches a handler on a live server.

mod common;

use std::collections::BTreeSet;

fn spec_routes() -> BTreeSet<(String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let mut out = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in ["get", "head", "put", "post", "delete", "patch"] {
            if item.get(method).is_some() {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn spec_lists_exactly_the_router_routes() {
    let router: BTreeSet<(String, String)> = shardbox::http::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let spec = spec_routes();
    let missing: Vec<_> = router.difference(&spec).collect();
    let extra: Vec<_> = spec.difference(&router).collect();
    assert!(
        missing.is_empty(),
        "routes missing from docs/openapi.json: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "docs/openapi.json lists routes the router lacks: {extra:?}"
    );
}

#[tokio::test]
async fn every_route_reaches_a_handler() {
    let s = common::TestServer::start().await;
    let mut c = s.client().await;
    for (method, template) in shardbox::http::ROUTES {
        let path = template.replace("{ns}", "app").replace("{key}", "some/key");
        let body = if template.contains(':') { "{}" } else { "" };
        let r = c.send(method, &path, &[], body.to_string()).await;
        assert_ne!(r.status, 405, "{method} {path}");
        if r.status == 404 && method != &"HEAD" {
            let msg = r.json()["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(
                !msg.starts_with("no such endpoint"),
                "{method} {path}: {msg}"
            );
        }
    }
    s.stop().await;
}
