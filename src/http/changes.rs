//! The change feed over HTTP: `GET /v1/changes` (NDJSON pages, a long poll with `wait=`, a
//! live NDJSON stream or Server-Sent Events with `follow=true`), and named cursors that hold
//! the log for a consumer (`/v1/changes/cursors/{name}`).
//!
//! A line is one change: `{"position":"<generation>:<lsn>:<index>","at_ms":…,"domain":…,
//! "op":…,"name":…, …}` ([`crate::engine::feed`]). A page's answer names where the next read
//! starts (`Shardbox-Next-Position`): past every change looked at, the filtered-out ones too.

use super::body::ReqBody;
use super::input::{duration_param, limit_param, query};
use super::response::{self, Resp};
use super::route_table::{route, RouteDef};
use super::ServerState;
use crate::engine::feed::{Feed, FeedError, Filter, Page, Position};
use crate::http::error::ApiError;
use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue, ACCEPT};
use hyper::Request;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The feed's routes.
pub(super) const ROUTES: &[RouteDef] = &[
    route!(
        "GET",
        "/v1/changes",
        [
            "after",
            "cursor",
            "limit",
            "wait",
            "follow",
            "domains",
            "kv_prefix",
            "events_prefix",
            "queue_prefix",
            "schedules_prefix"
        ],
        |s, p, r| changes(&s, &r).await
    ),
    route!(now "GET", "/v1/changes/cursors", [], |s, p, r| cursors(s)),
    route!(now "GET", "/v1/changes/cursors/{name}", [], |s, p, r| cursor(
        s,
        p.get("name")
    )),
    route!(unlogged "PUT", "/v1/changes/cursors/{name}", [], |s, p, r| {
        put_cursor(&s, p.get("name"), r).await
    }),
    route!(now "DELETE", "/v1/changes/cursors/{name}", [], |s, p, r| {
        delete_cursor(s, p.get("name"))
    }),
];

/// Where the next read of a page starts.
pub const NEXT_POSITION: HeaderName = HeaderName::from_static("shardbox-next-position");

/// Changes in one page, at most.
const LIMIT_MAX: usize = 10_000;

/// Keeps an idle stream (and proxies) alive.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// The domains a filter may name.
const DOMAINS: [&str; 4] = ["kv", "events", "queue", "schedules"];

/// What a feed error answers.
pub fn feed_error(e: FeedError) -> ApiError {
    match e {
        FeedError::OtherGeneration { ours } => ApiError {
            position: Some(ours.to_string()),
            ..ApiError::new(
                409,
                "generation_mismatch",
                format!(
                    "the position is of another history of this store (restored or imported since); its generation is now {ours}: take an export and read on from the position it names"
                ),
            )
        },
        FeedError::Gone { oldest } => ApiError {
            position: oldest.map(|p| p.to_string()),
            ..ApiError::new(
                410,
                "resnapshot_required",
                "the log no longer holds the changes after this position: take an export (it names its position) and read on from there",
            )
        },
        FeedError::Ahead { last } => ApiError {
            position: Some(last.to_string()),
            ..ApiError::bad_request(format!(
                "the position is past the last change ({last})"
            ))
        },
        FeedError::NoSuchCursor(name) => {
            ApiError::not_found(format!("no change feed cursor `{name}`"))
        }
        FeedError::Invalid(m) => ApiError::bad_request(m),
        FeedError::Log(m) => {
            tracing::error!(error = %m, "change feed read failed");
            ApiError::internal()
        }
    }
}

/// A position from the query (`now`: the end of the log).
pub fn position_param(feed: &Feed, text: &str, what: &str) -> Result<Position, ApiError> {
    if text == "now" {
        return Ok(feed.end());
    }
    text.parse()
        .map_err(|e: String| ApiError::bad_request(format!("{what}: {e}, or `now`")))
}

fn filter_of(q: &HashMap<String, String>) -> Result<Filter, ApiError> {
    let mut f = Filter::default();
    if let Some(list) = q.get("domains") {
        let mut names = Vec::new();
        for d in list.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            if !DOMAINS.contains(&d) {
                return Err(ApiError::bad_request(format!(
                    "domains: `{d}` is not one of {}",
                    DOMAINS.join(", ")
                )));
            }
            names.push(d.to_string());
        }
        f.domains = Some(names);
    }
    for d in DOMAINS {
        if let Some(p) = q.get(&format!("{d}_prefix")) {
            f.prefixes.push((d.to_string(), p.clone()));
        }
    }
    Ok(f)
}

/// Reads a page off the async threads (the log is read from its files).
async fn read(
    feed: Arc<crate::engine::Engine>,
    after: Position,
    limit: usize,
    filter: Filter,
) -> Result<Page, ApiError> {
    tokio::task::spawn_blocking(move || feed.feed().read(after, limit, &filter))
        .await
        .map_err(|e| ApiError::task_failed("a change feed read", e))?
        .map_err(feed_error)
}

/// `GET /v1/changes`
async fn changes(state: &ServerState, req: &Request<ReqBody>) -> Result<Resp, ApiError> {
    let q = query(req);
    let engine = state.store.engine().clone();
    let feed = engine.feed();
    let last_event_id = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok());
    let after = match (last_event_id, q.get("after"), q.get("cursor")) {
        (Some(id), _, _) => position_param(feed, id, "Last-Event-ID")?,
        (None, Some(a), None) => position_param(feed, a, "after")?,
        (None, None, Some(name)) => feed
            .cursors
            .position(name, feed.oldest())
            .map_err(feed_error)?,
        (None, Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give after or cursor, not both"))
        }
        (None, None, None) => {
            return Err(ApiError::bad_request(
                "after is required: a position (from a change, or the one an export names), `now`, or cursor=<name>",
            ))
        }
    };
    let filter = filter_of(&q)?;
    let limit = limit_param(&q)?;
    if limit == 0 || limit > LIMIT_MAX {
        return Err(ApiError::bad_request(format!(
            "limit must be 1-{LIMIT_MAX}, got {limit}"
        )));
    }
    let sse = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    if super::input::bool_param(&q, "follow", false)? || sse {
        return follow(state, engine, after, filter, sse);
    }
    // Bounded like every long poll (the claim's bound).
    let wait = duration_param(&q, "wait")?
        .unwrap_or(0)
        .min(state.store.config().queue.claim_wait_max_ms);
    let mut page = read(engine.clone(), after, limit, filter.clone()).await?;
    if page.entries.is_empty() && wait > 0 {
        // A long poll: one place among the waiters, ended early by a commit or the client.
        if let Some(waiting) = state.waiting() {
            let mut commits = feed.commits();
            let deadline = tokio::time::Instant::now() + Duration::from_millis(wait);
            'wait: loop {
                let woke = waiting
                    .unless_closed(tokio::time::timeout_at(deadline, commits.changed()))
                    .await;
                if !matches!(woke, Some(Ok(Ok(())))) {
                    break;
                }
                // Read on while pages move without passing the filter — within the wait, and
                // only while the client is there.
                loop {
                    let at = page.next;
                    let Some(next) = waiting
                        .unless_closed(read(engine.clone(), at, limit, filter.clone()))
                        .await
                    else {
                        break 'wait;
                    };
                    page = next?;
                    if !page.entries.is_empty() {
                        break 'wait;
                    }
                    if page.next == at || tokio::time::Instant::now() >= deadline {
                        break;
                    }
                }
            }
        }
    }
    let mut body = Vec::with_capacity(page.entries.len() * 128);
    for e in &page.entries {
        body.extend_from_slice(&e.json_line());
        body.push(b'\n');
    }
    let mut resp = response::value(body, Some("application/x-ndjson"));
    if let Ok(v) = HeaderValue::from_str(&page.next.to_string()) {
        resp.headers_mut().insert(NEXT_POSITION, v);
    }
    Ok(resp)
}

/// A live stream from `after`: NDJSON lines, or Server-Sent Events (`id:` the position, so a
/// reconnect with `Last-Event-ID` resumes after the last change received).
fn follow(
    state: &ServerState,
    engine: Arc<crate::engine::Engine>,
    after: Position,
    filter: Filter,
    sse: bool,
) -> Result<Resp, ApiError> {
    let (mut waiting, permit) = state.follower()?;
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    let (mut resp, tx) = response::channel(200, content_type, 16);
    // The log is held from the reader's position while it streams: a reader that falls
    // behind past `feed_retain_bytes_max` is dropped (its next read answers 410 in-band).
    let hold = engine.feed().holds.add(after.first_needed());
    tokio::spawn(async move {
        let _permit = permit;
        let holds = engine.feed().holds.clone();
        let _release = ReleaseHold(holds.clone(), hold);
        let mut commits = engine.feed().commits();
        let mut pos = after;
        if sse
            && tx
                .send(Bytes::from_static(b": connected\n\n"))
                .await
                .is_err()
        {
            return;
        }
        loop {
            commits.borrow_and_update();
            let page = match read(engine.clone(), pos, 1000, filter.clone()).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(in_band(&e, sse)).await;
                    return;
                }
            };
            for e in &page.entries {
                let mut msg = Vec::with_capacity(160);
                if sse {
                    msg.extend_from_slice(
                        format!("id: {}\nevent: change\ndata: ", e.position).as_bytes(),
                    );
                    msg.extend_from_slice(&e.json_line());
                    msg.extend_from_slice(b"\n\n");
                } else {
                    msg.extend_from_slice(&e.json_line());
                    msg.push(b'\n');
                }
                if tx.send(Bytes::from(msg)).await.is_err() {
                    return;
                }
            }
            let moved = page.next != pos;
            pos = page.next;
            if !holds.advance(hold, pos.first_needed()) {
                let e = feed_error(FeedError::Gone {
                    oldest: engine.feed().oldest(),
                });
                let _ = tx.send(in_band(&e, sse)).await;
                return;
            }
            if moved {
                continue; // more may be committed already (a filter passed none of a page)
            }
            tokio::select! {
                _ = engine.stopping() => return,
                changed = tokio::time::timeout(HEARTBEAT, commits.changed()) => {
                    match changed {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return,
                        Err(_) => {
                            let beat: &[u8] = if sse { b": heartbeat\n\n" } else { b"\n" };
                            if tx.send(Bytes::from_static(beat)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                _ = waiting.client_closed() => {
                    let beat: &[u8] = if sse { b": heartbeat\n\n" } else { b"\n" };
                    if tx.send(Bytes::from_static(beat)).await.is_err() {
                        return;
                    }
                    if waiting.left_entirely(Duration::from_millis(500)).await {
                        return;
                    }
                }
            }
        }
    });
    resp.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    Ok(resp)
}

/// An error that ends a stream, in the stream's own format (an SSE `error` event, or an
/// NDJSON line).
fn in_band(e: &ApiError, sse: bool) -> Bytes {
    Bytes::from(if sse {
        format!("event: error\ndata: {}\n\n", e.body())
    } else {
        format!("{}\n", e.body())
    })
}

/// `GET /v1/changes/cursors`
fn cursors(state: &ServerState) -> Result<Resp, ApiError> {
    let feed = state.store.engine().feed();
    Ok(response::json_of(
        200,
        &serde_json::json!({
            "cursors": feed.cursors.list(),
            "end": feed.end().to_string(),
            "oldest": feed.oldest().map(|p| p.to_string()),
        }),
    ))
}

/// `GET /v1/changes/cursors/{name}`
fn cursor(state: &ServerState, name: &str) -> Result<Resp, ApiError> {
    let feed = state.store.engine().feed();
    match feed.cursors.list().into_iter().find(|c| c.name == name) {
        Some(c) => Ok(response::json_of(200, &c)),
        None => Err(feed_error(FeedError::NoSuchCursor(name.to_string()))),
    }
}

/// `PUT /v1/changes/cursors/{name}` `{"position": "…"}`: creates the cursor there or moves it
/// forward; it holds the log from there on.
async fn put_cursor(
    state: &ServerState,
    name: &str,
    req: Request<ReqBody>,
) -> Result<Resp, ApiError> {
    crate::base::names::validate_name("cursor", name)?;
    reserved(name)?;
    let (parts, body) = req.into_parts();
    let body = super::input::json_bytes(state, &parts.headers, body).await?;
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        position: String,
    }
    let b: Body = crate::base::json_object::from_object(&body.bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "the body is {{\"position\": \"<generation>:<lsn>:<index>\" or \"now\"}}: {e}"
        ))
    })?;
    let feed = state.store.engine().feed();
    let at = position_param(feed, &b.position, "position")?;
    if at.generation == feed.generation() && at.lsn > feed.end().lsn {
        return Err(feed_error(FeedError::Ahead { last: feed.end() }));
    }
    let created = feed
        .cursors
        .set(name, at, feed.oldest())
        .map_err(feed_error)?;
    let c = feed
        .cursors
        .list()
        .into_iter()
        .find(|c| c.name == name)
        .ok_or_else(ApiError::internal)?;
    Ok(response::json_of(if created { 201 } else { 200 }, &c))
}

/// `DELETE /v1/changes/cursors/{name}`: its hold on the log goes with it.
fn delete_cursor(state: &ServerState, name: &str) -> Result<Resp, ApiError> {
    reserved(name)?;
    let feed = state.store.engine().feed();
    if !feed.cursors.delete(name).map_err(feed_error)? {
        return Err(feed_error(FeedError::NoSuchCursor(name.to_string())));
    }
    Ok(response::empty(204))
}

/// The NATS sink's own cursor is not moved or deleted through the API.
fn reserved(name: &str) -> Result<(), ApiError> {
    if name == crate::store::sink::CURSOR || name == crate::store::sink::LOG_CURSOR {
        return Err(ApiError::new(
            409,
            "cursor_reserved",
            format!("`{name}` is the NATS sink's cursor: it moves as JetStream acknowledges"),
        ));
    }
    Ok(())
}

/// Releases a reader's hold when its stream ends, however it ends.
struct ReleaseHold(Arc<crate::engine::feed::holds::Holds>, u64);

impl Drop for ReleaseHold {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}
