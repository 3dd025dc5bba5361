//! Event stream handlers: parse the request, call the events domain, render or stream the answer.

use super::body::ReqBody;
use super::input::{duration, duration_param, json_body, json_items, limit_param, query};
use super::response::{self, Resp};
use super::route_table::{route, RouteDef};
use super::ServerState;
use crate::base::util::parse_time_ms;
use crate::events::apply::NewEvent;
use crate::events::EventError;
use crate::events::{model, parse_bucket, validate_name, EventOut, RangeQuery};
use crate::http::error::ApiError;
use bytes::Bytes;
use hyper::header::ACCEPT;
use hyper::Request;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::time::Duration;

/// The event stream routes.
pub(super) const ROUTES: &[RouteDef] = &[
    route!(now "GET", "/v1/streams", ["limit", "after"], |s, p, r| {
        list_streams(s, &r)
    }),
    route!(now "GET", "/v1/streams/{stream}", [], |s, p, r| get_stream(
        s,
        p.get("stream")
    )),
    route!("PUT", "/v1/streams/{stream}", [], |s, p, r| put_stream(
        &s,
        p.get("stream"),
        r
    )
    .await),
    route!("DELETE", "/v1/streams/{stream}", [], |s, p, r| {
        delete_stream(&s, p.get("stream")).await
    }),
    route!(idempotent "POST", "/v1/streams/{stream}/events", [], |s, p, r| append(
        &s,
        p.get("stream"),
        r
    )
    .await),
    route!(
        "GET",
        "/v1/streams/{stream}/events",
        ["from", "to", "type", "order", "limit", "after", "follow", "wait"],
        |s, p, r| range(&s, p.get("stream"), &r).await
    ),
    route!(
        "DELETE",
        "/v1/streams/{stream}/events",
        ["before"],
        |s, p, r| trim(&s, p.get("stream"), &r).await
    ),
    route!(
        "GET",
        "/v1/streams/{stream}/counts",
        ["from", "to", "step"],
        |s, p, r| counts(&s, p.get("stream"), &r).await
    ),
];

/// SSE heartbeat period: keeps idle connections (and proxies) alive.
const HEARTBEAT: Duration = Duration::from_secs(15);

fn time_param(q: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    q.get(name)
        .map(|v| parse_time_ms(v).map_err(|e| ApiError::bad_request(format!("{name}: {e}"))))
        .transpose()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamReq {
    bucket: Option<String>,
    retention: Option<String>,
}

/// `PUT /v1/streams/{stream}`
pub async fn put_stream(
    state: &ServerState,
    stream: &str,
    req: Request<ReqBody>,
) -> Result<Resp, ApiError> {
    validate_name(stream)?;
    let r: StreamReq = json_body(state, req).await?;
    let bucket = r.bucket.as_deref().map(parse_bucket).transpose()?;
    let retention = r
        .retention
        .as_deref()
        .map(|t| duration("retention", t))
        .transpose()?;
    let (created, info) = state
        .store
        .events()
        .configure(stream, bucket, retention)
        .await?;
    Ok(response::json(
        if created { 201 } else { 200 },
        &serde_json::to_value(info).unwrap_or_default(),
    ))
}

pub fn get_stream(state: &ServerState, stream: &str) -> Result<Resp, ApiError> {
    let info = state
        .store
        .events()
        .info(stream)?
        .ok_or_else(|| EventError::StreamNotFound(stream.to_string()))?;
    Ok(response::json_of(200, &info))
}

/// `GET /v1/streams?limit=&after=`: a page of streams by name (`next` is the cursor).
pub fn list_streams(state: &ServerState, req: &Request<ReqBody>) -> Result<Resp, ApiError> {
    let (limit, after) =
        super::input::name_page(&query(req), state.store.config().kv.list_limit_max)?;
    let (page, next) = state.store.events().page(after.as_deref(), limit)?;
    Ok(response::json(
        200,
        &serde_json::json!({"streams": page, "next": next}),
    ))
}

pub async fn delete_stream(state: &ServerState, stream: &str) -> Result<Resp, ApiError> {
    state.store.events().drop_stream(stream).await?;
    Ok(response::empty(204))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventReq {
    ts: Option<serde_json::Value>,
    #[serde(rename = "type")]
    kind: Option<String>,
    data: Box<RawValue>,
}

impl EventReq {
    fn into_event(self) -> Result<NewEvent, ApiError> {
        let ts = match self.ts {
            None => None,
            Some(serde_json::Value::Number(n)) => Some(n.as_u64().ok_or_else(|| {
                ApiError::bad_request("ts must be ms since the epoch or RFC 3339")
            })?),
            Some(serde_json::Value::String(s)) => {
                Some(parse_time_ms(&s).map_err(|e| ApiError::bad_request(format!("ts: {e}")))?)
            }
            Some(_) => {
                return Err(ApiError::bad_request(
                    "ts must be ms since the epoch or RFC 3339",
                ))
            }
        };
        // Stored on one line, so NDJSON and SSE output stay well-formed.
        let data = crate::base::util::one_line(self.data.get()).into_owned();
        Ok(NewEvent {
            ts,
            kind: self.kind,
            data: data.into_bytes(),
        })
    }
}

/// `POST /v1/streams/{stream}/events`: one JSON event or NDJSON, all or nothing.
pub async fn append(
    state: &ServerState,
    stream: &str,
    req: Request<ReqBody>,
) -> Result<Resp, ApiError> {
    validate_name(stream)?;
    let max = state.store.config().events.append_events_max;
    let (events, _) = json_items(state, req, max, "append_events_max", |r: EventReq| {
        r.into_event()
    })
    .await?;
    let ids = state.store.events().append(stream, events).await?;
    #[derive(serde::Serialize)]
    struct Appended {
        ids: Vec<String>,
    }
    Ok(response::json_of(201, &Appended { ids }))
}

fn event_json(e: &EventOut) -> String {
    let data = String::from_utf8_lossy(&e.data);
    let kind = serde_json::to_string(&e.kind).unwrap_or_else(|_| "null".into());
    format!(
        "{{\"id\":\"{}\",\"ts\":{},\"type\":{kind},\"data\":{data}}}",
        e.id(),
        e.ts
    )
}

fn range_query(q: &HashMap<String, String>) -> Result<RangeQuery, ApiError> {
    let limit = limit_param(q)?;
    let desc = match q.get("order").map(String::as_str) {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(o) => {
            return Err(ApiError::bad_request(format!(
                "order must be asc or desc, got `{o}`"
            )))
        }
    };
    let after = match q.get("after").filter(|a| !a.is_empty()) {
        None => None,
        Some(a) => Some(model::parse_id(a).ok_or_else(|| {
            ApiError::bad_request("after must be an event id (<ms>-<seq>) from a previous page")
        })?),
    };
    Ok(RangeQuery {
        from: time_param(q, "from")?,
        to: time_param(q, "to")?,
        kind: q.get("type").cloned(),
        desc,
        limit,
        after,
    })
}

/// Runs a range query off the async threads.
async fn run_range(
    state: &ServerState,
    stream: &str,
    q: RangeQuery,
) -> Result<(Vec<EventOut>, bool), ApiError> {
    let events = state.store.events().clone();
    let name = stream.to_string();
    tokio::task::spawn_blocking(move || events.range(&name, &q))
        .await
        .map_err(|e| ApiError::task_failed("a range task", e))?
        .map_err(ApiError::from)
}

/// `GET /v1/streams/{stream}/events`
pub async fn range(
    state: &ServerState,
    stream: &str,
    req: &Request<ReqBody>,
) -> Result<Resp, ApiError> {
    validate_name(stream)?;
    let q = query(req);
    let accept = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if super::input::bool_param(&q, "follow", false)? || accept.contains("text/event-stream") {
        let last_event_id = req
            .headers()
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        return follow(state, stream, &q, last_event_id).await;
    }
    let rq = range_query(&q)?;
    let wait = duration_param(&q, "wait")?.unwrap_or(0);
    let (mut events, mut more) = run_range(state, stream, rq.clone()).await?;
    if events.is_empty() && wait > 0 {
        // Long poll: wait for the next append (bounded), then look once more.
        let wait = wait.min(state.store.config().queue.claim_wait_max_ms);
        let (waiting, _permit) = state.follower()?;
        let notify = state.store.events().follower(stream);
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        (events, more) = run_range(state, stream, rq.clone()).await?;
        if events.is_empty() {
            // Shutdown answers a parked poll at once, with what there is (nothing); so does a
            // client that hung up (its slot is free at once).
            tokio::select! {
                _ = tokio::time::timeout(Duration::from_millis(wait), notified) => {
                    (events, more) = run_range(state, stream, rq).await?;
                }
                _ = state.store.engine().stopping() => {}
                _ = waiting.client_closed() => {}
            }
        }
    }
    let next = if more {
        events.last().map(|e| e.id())
    } else {
        None
    };
    let ndjson = accept.contains("application/x-ndjson");
    if ndjson {
        let (resp, tx) = response::channel(200, "application/x-ndjson", 64);
        tokio::spawn(async move {
            let mut chunk = String::with_capacity(64 * 1024);
            for e in &events {
                chunk.push_str(&event_json(e));
                chunk.push('\n');
                if chunk.len() > 60 * 1024
                    && tx
                        .send(Bytes::from(std::mem::take(&mut chunk)))
                        .await
                        .is_err()
                {
                    return;
                }
            }
            if !chunk.is_empty() {
                let _ = tx.send(Bytes::from(chunk)).await;
            }
        });
        let mut resp = resp;
        if let Some(n) = next.and_then(|n| hyper::header::HeaderValue::from_str(&n).ok()) {
            resp.headers_mut().insert("x-next-cursor", n);
        }
        return Ok(resp);
    }
    let mut body = String::with_capacity(events.len() * 64 + 32);
    body.push_str("{\"events\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&event_json(e));
    }
    body.push_str("],\"next\":");
    body.push_str(&serde_json::to_string(&next).unwrap_or_else(|_| "null".into()));
    body.push('}');
    Ok(response::json_bytes(200, body.into_bytes()))
}

/// Server-Sent Events from `after` / `Last-Event-ID` (or from now), live as appends commit.
async fn follow(
    state: &ServerState,
    stream: &str,
    q: &HashMap<String, String>,
    last_event_id: Option<String>,
) -> Result<Resp, ApiError> {
    let events = state.store.events().clone();
    // An empty one is no position (as in a range read, and as EventSource sends none).
    let start = match last_event_id
        .as_deref()
        .filter(|id| !id.is_empty())
        .or(q.get("after").map(String::as_str).filter(|a| !a.is_empty()))
    {
        Some(id) => Some(model::parse_id(id).ok_or_else(|| {
            ApiError::bad_request("Last-Event-ID / after must be an event id (<ms>-<seq>)")
        })?),
        None => None,
    };
    if events.info(stream)?.is_none() {
        return Err(EventError::StreamNotFound(stream.to_string()).into());
    }
    let (mut waiting, permit) = state.follower()?;
    // From now: start after the newest event's id — not after its millisecond, which would skip
    // events appended later in that same millisecond (the next sequence numbers).
    let mut pos = match start {
        Some(p) => Some(p),
        None => {
            let newest = RangeQuery {
                desc: true,
                limit: 1,
                ..RangeQuery::default()
            };
            let ev = events.clone();
            let name = stream.to_string();
            tokio::task::spawn_blocking(move || ev.range(&name, &newest))
                .await
                .map_err(|e| ApiError::task_failed("a range task", e))??
                .0
                .first()
                .map(|e| (e.ts, e.seq))
        }
    };
    let kind = q.get("type").cloned();
    let (resp, tx) = response::channel(200, "text/event-stream", 16);
    let name = stream.to_string();
    let engine = state.store.engine().clone();
    tokio::spawn(async move {
        let _permit = permit;
        let notify = events.follower(&name);
        if tx
            .send(Bytes::from_static(b": connected\n\n"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let rq = RangeQuery {
                kind: kind.clone(),
                limit: 1000,
                after: pos,
                ..RangeQuery::default()
            };
            let ev = events.clone();
            let n = name.clone();
            let got = tokio::task::spawn_blocking(move || ev.range(&n, &rq)).await;
            let Ok(Ok((batch, more))) = got else {
                let _ = tx
                    .send(Bytes::from_static(
                        b"event: error\ndata: stream unavailable\n\n",
                    ))
                    .await;
                return;
            };
            for e in &batch {
                let mut msg = format!("id: {}\n", e.id());
                if let Some(k) = &e.kind {
                    msg.push_str(&format!("event: {k}\n"));
                }
                msg.push_str("data: ");
                msg.push_str(&event_json(e));
                msg.push_str("\n\n");
                if tx.send(Bytes::from(msg)).await.is_err() {
                    return;
                }
                pos = Some((e.ts, e.seq));
            }
            if more {
                continue;
            }
            tokio::select! {
                _ = engine.stopping() => return,
                tick = tokio::time::timeout(HEARTBEAT, notified) => {
                    if tick.is_err() && tx.send(Bytes::from_static(b": heartbeat\n\n")).await.is_err() {
                        return;
                    }
                }
                // The client closed its side: a heartbeat now tells one that left entirely
                // (its reset comes back at once) from one that still reads.
                // (Once that is known, the client is no longer watched.)
                _ = waiting.client_closed() => {
                    if tx.send(Bytes::from_static(b": heartbeat\n\n")).await.is_err() {
                        return;
                    }
                    if waiting.left_entirely(Duration::from_millis(500)).await {
                        return;
                    }
                }
            }
        }
    });
    let mut resp = resp;
    resp.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    Ok(resp)
}

/// `GET /v1/streams/{stream}/counts?from=&to=&step=`
pub async fn counts(
    state: &ServerState,
    stream: &str,
    req: &Request<ReqBody>,
) -> Result<Resp, ApiError> {
    validate_name(stream)?;
    let q = query(req);
    let from = time_param(&q, "from")?.ok_or_else(|| ApiError::bad_request("from is required"))?;
    let to = time_param(&q, "to")?.unwrap_or_else(|| state.store.engine().now_ms());
    let step = duration_param(&q, "step")?.unwrap_or(3_600_000);
    let events = state.store.events().clone();
    let name = stream.to_string();
    let counts = tokio::task::spawn_blocking(move || events.counts(&name, from, to, step))
        .await
        .map_err(|e| ApiError::task_failed("a counts task", e))??;
    let items: Vec<_> = counts
        .iter()
        .map(|(start, n)| serde_json::json!({"start": start, "count": n}))
        .collect();
    Ok(response::json(
        200,
        &serde_json::json!({"step_ms": step, "counts": items}),
    ))
}

/// `DELETE /v1/streams/{stream}/events?before=<ts>`
pub async fn trim(
    state: &ServerState,
    stream: &str,
    req: &Request<ReqBody>,
) -> Result<Resp, ApiError> {
    validate_name(stream)?;
    let q = query(req);
    let before =
        time_param(&q, "before")?.ok_or_else(|| ApiError::bad_request("before is required"))?;
    let (dropped, deleted) = state.store.events().trim(stream, before, true).await?;
    Ok(response::json(
        200,
        &serde_json::json!({"dropped_buckets": dropped, "deleted_events": deleted}),
    ))
}
