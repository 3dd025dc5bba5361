//! `/healthz`, `/readyz` and `/metrics`.

use super::response::{self, Resp};
use super::routes::{route, RouteDef};
use super::ServerState;
use hyper::header::{HeaderValue, CONTENT_TYPE};

/// The health and metrics routes.
pub(super) const ROUTES: &[RouteDef] = &[
    route!("GET", "/healthz", [], |s, p, r| Ok(healthz())),
    route!("HEAD", "/healthz", [], |s, p, r| Ok(healthz())),
    route!("GET", "/readyz", [], |s, p, r| Ok(readyz(&s))),
    route!("HEAD", "/readyz", [], |s, p, r| Ok(readyz(&s))),
    route!("GET", "/metrics", [], |s, p, r| Ok(metrics(&s))),
];

pub fn healthz() -> Resp {
    response::json(200, &serde_json::json!({"status": "ok"}))
}

/// 200 when every shard accepts writes and the disk has room; else 503 naming what is wrong.
pub fn readyz(state: &ServerState) -> Resp {
    let engine = state.store.engine();
    let mut problems = Vec::new();
    for (shard, reason) in engine.failed_shards() {
        problems.push(serde_json::json!({"shard": shard, "reason": reason}));
    }
    let floor = state.store.config().disk_free_bytes_min;
    let free = crate::engine::space::free_bytes(engine.data_dir());
    match free {
        Some(free) if free < floor => problems.push(serde_json::json!({
            "disk": format!("{} bytes free under the data directory, below disk_free_bytes_min ({floor})", free)
        })),
        None => problems.push(serde_json::json!({"disk": "cannot read free space of the data directory"})),
        _ => {}
    }
    if engine.space().is_low() {
        problems.push(serde_json::json!({
            "disk": format!("{} bytes free, under disk_reserve_bytes: writes that add data get 507", engine.space().free())
        }));
    }
    if engine.is_closing() {
        problems.push(serde_json::json!({"shutdown": "shutting down"}));
    }
    if problems.is_empty() {
        response::json(
            200,
            &serde_json::json!({"status": "ready", "shards": engine.shards().len(), "disk_free_bytes": free}),
        )
    } else {
        let mut r = response::json(
            503,
            &serde_json::json!({"status": "unavailable", "problems": problems,
                "error": {"code": "not_ready", "message": "see problems"}}),
        );
        r.headers_mut()
            .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("5"));
        r
    }
}

pub fn metrics(state: &ServerState) -> Resp {
    let mut text = crate::metrics::render(state.store.engine(), state.conns.len());
    state.store.render_domain_metrics(&mut text);
    let followers = state.store.config().followers_max
        - state
            .followers
            .available_permits()
            .min(state.store.config().followers_max);
    crate::metrics::gauge(
        &mut text,
        "shardbox_stream_followers_open",
        "Event stream followers (SSE) and long polls open.",
        followers as u64,
    );
    let mut r = response::empty(200);
    *r.body_mut() = response::full(text);
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}
