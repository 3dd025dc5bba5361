//! Request routing: the domains' route tables, and the one place errors become responses.

use super::body::ReqBody;
use super::response::{self, Resp};
use super::route_table::{self, Handler, RouteDef};
use super::{
    access, access_log, admin, cache, changes, events, health, kv, queue, retries, status,
    ServerState,
};
use crate::http::error::ApiError;
use hyper::Request;
use std::sync::Arc;

/// Every route table, one per domain. A new domain adds its table here, and nothing else in
/// the HTTP layer.
pub(super) const TABLES: &[&[RouteDef]] = &[
    health::ROUTES,
    kv::ROUTES,
    cache::ROUTES,
    queue::ROUTES,
    events::ROUTES,
    admin::ROUTES,
    status::ROUTES,
    changes::ROUTES,
];

/// The route `method path` reaches, `Ok(None)` for a 404/405 and `Err` for a malformed path:
/// the matching of [`handle`], for the fuzz targets.
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
pub fn find_route(method: &str, path: &str) -> Result<Option<&'static RouteDef>, ApiError> {
    match router().find_path(method, path) {
        Ok(hit) => Ok(Some(hit.route)),
        Err(e) if e.status == 404 || e.status == 405 => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every table's routes, their templates compiled once.
fn router() -> &'static route_table::Router {
    static ROUTER: std::sync::OnceLock<route_table::Router> = std::sync::OnceLock::new();
    ROUTER.get_or_init(|| route_table::Router::new(TABLES))
}

/// Every (method, path template, query parameters) the server serves. `docs/openapi.json` must
/// list exactly these (a test checks), and a test sends each one to a live server.
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
pub fn routes() -> impl Iterator<Item = (&'static str, &'static str, &'static [&'static str])> {
    TABLES
        .iter()
        .flat_map(|t| t.iter())
        .map(|r| (r.method, r.path, r.query))
}

/// The (method, path template) of every route that takes an `Idempotency-Key`.
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
pub fn idempotent_routes() -> impl Iterator<Item = (&'static str, &'static str)> {
    TABLES
        .iter()
        .flat_map(|t| t.iter())
        .filter(|r| r.idempotent)
        .map(|r| (r.method, r.path))
}

/// A request on its way through: what its answer needs once its handler has run.
pub struct Ticket {
    /// The request id (the client's `X-Request-Id` when usable), written with the answer.
    pub id: access::RequestId,
    /// The `request` span, when a line it would carry can be written ([`request_span`]).
    span: tracing::Span,
    method: hyper::Method,
    uri: hyper::Uri,
    started: std::time::Instant,
    /// The route once matched (the labels of the request metrics), and its router index.
    matched: Option<(&'static RouteDef, usize)>,
    /// The caller, kept only for the access log.
    caller: Option<Arc<str>>,
    /// Headers admission adds to the answer (rate-limit state, `WWW-Authenticate`).
    headers: hyper::HeaderMap,
}

/// What [`begin`] made of a request.
pub enum Begun {
    /// Answered already: refused, or by a handler that does not wait ([`Handler::Now`]).
    Now(Result<Resp, ApiError>),
    /// A handler that waits: the connection drives it ([`Ticket::poll`]) to its answer.
    Later(route_table::Reply),
}

/// Takes a request as far as it goes without waiting: its id, the route, the query, tokens and
/// rate limits, and a handler that answers at once. `refused` is what the connection found
/// wrong with the head (answered like any other error). A panic on the way is a JSON 500.
pub fn begin(
    state: &Arc<ServerState>,
    req: Request<ReqBody>,
    refused: Option<ApiError>,
) -> (Ticket, Begun) {
    let id = access::request_id(req.headers());
    let span = request_span(&id, &req);
    let mut ticket = Ticket {
        id,
        method: req.method().clone(),
        uri: req.uri().clone(),
        started: std::time::Instant::now(),
        matched: None,
        caller: None,
        headers: hyper::HeaderMap::new(),
        span,
    };
    let span = ticket.span.clone();
    let begun = span.in_scope(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            route(state, req, refused, &mut ticket)
        }))
        .unwrap_or_else(|panic| Begun::Now(Err(panicked(panic))))
    });
    (ticket, begun)
}

impl Ticket {
    /// Polls a waiting handler inside the request's span; a panic is a JSON 500.
    pub fn poll(
        &self,
        reply: &mut route_table::Reply,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<Resp, ApiError>> {
        let _entered = self.span.enter();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reply.as_mut().poll(cx)))
            .unwrap_or_else(|panic| std::task::Poll::Ready(Err(panicked(panic))))
    }
}

/// A handler's panic as the error it answers (and the line it logs).
fn panicked(panic: Box<dyn std::any::Any + Send>) -> ApiError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %what, "a request handler panicked");
    ApiError::internal()
}

/// Renders a request's outcome as its response: errors as JSON, counted in the metrics and
/// the access log, with the headers admission added. The request id is the connection's to
/// write ([`Ticket::id`]).
pub fn finish(state: &ServerState, t: &mut Ticket, outcome: Result<Resp, ApiError>) -> Resp {
    let mut resp = match outcome {
        Ok(r) => r,
        Err(e) => {
            failed(state, t, &e);
            response::error(&e)
        }
    };
    let took = t.started.elapsed();
    let status = resp.status().as_u16();
    crate::base::metrics::record_status(status);
    match t.matched {
        Some((r, index)) => crate::base::metrics::families::record_route(
            index,
            r.path,
            r.method,
            status,
            took,
            access::ConnCtx::take_waited(),
        ),
        // An unmatched request's method is whatever the client sent: not a label.
        None => crate::base::metrics::families::record_request("unmatched", "-", status, took),
    }
    if let Some(log) = &state.access_log {
        use hyper::body::Body as _;
        log.record(&access_log::Entry {
            id: t.id.as_bytes(),
            caller: t.caller.as_deref(),
            ip: access::ConnCtx::ip(),
            method: t.method.as_str(),
            route: t.matched.map_or("-", |(r, _)| r.path),
            path: t.uri.path(),
            status,
            bytes: resp.body().size_hint().exact(),
            took,
        });
    }
    if !t.headers.is_empty() {
        resp.headers_mut().extend(std::mem::take(&mut t.headers));
    }
    resp
}

/// A failed request's line (server errors) and its place among the status page's recent
/// errors (server errors and 429s).
fn failed(state: &ServerState, t: &Ticket, e: &ApiError) {
    if e.status >= 500 {
        // The line names the request itself: most requests carry no span.
        tracing::warn!(
            id = %String::from_utf8_lossy(t.id.as_bytes()),
            method = %t.method,
            path = %t.uri.path(),
            status = e.status,
            code = e.code,
            message = %e.message,
            "request failed"
        );
    }
    if e.status >= 500 || e.status == 429 {
        state.recent_errors.push(status::RecentError {
            at_ms: state.store.engine().now_ms(),
            status: e.status,
            code: e.code.to_string(),
            method: t.method.to_string(),
            path: t.uri.path().chars().take(256).collect(),
            message: e.message.chars().take(512).collect(),
            request_id: String::from_utf8_lossy(t.id.as_bytes()).into_owned(),
        });
    }
}

/// The `request` span (id, method, path, caller) over a request's handling — made only where a
/// line it would carry can be written: for every request when `shardbox=debug` (or finer) is
/// on, else only for the admin routes and `Idempotency-Key` runs, which log their work at info
/// and warn. Anywhere else a span would be formatted on every request for lines that are never
/// written (≈ 1.5 µs of a hot GET's 16 µs); a failure's own line names the request instead.
fn request_span(id: &access::RequestId, req: &Request<ReqBody>) -> tracing::Span {
    let wanted = tracing::enabled!(target: "shardbox::request", tracing::Level::DEBUG)
        || req.uri().path().starts_with("/v1/admin")
        || req.headers().contains_key(&retries::HEADER);
    if !wanted {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "request",
        id = %String::from_utf8_lossy(id.as_bytes()),
        method = %req.method(),
        path = %req.uri().path(),
        caller = tracing::field::Empty
    )
}

/// Routes a request: refused, answered at once, or a future for the connection to drive.
fn route(
    state: &Arc<ServerState>,
    req: Request<ReqBody>,
    refused: Option<ApiError>,
    t: &mut Ticket,
) -> Begun {
    match admit(state, req, refused, t) {
        Err(e) => Begun::Now(Err(e)),
        Ok((route, params, req)) => {
            if route.idempotent {
                if let Some(key) = req.headers().get(&retries::HEADER).cloned() {
                    let s = state.clone();
                    let run: route_table::Reply =
                        Box::pin(async move { retries::run(&s, route, params, req, &key).await });
                    return Begun::Later(hub_acked(state, route, run));
                }
            }
            if let Some(q) = req.uri().query().filter(|q| q.contains("min_position=")) {
                match min_position(state, q) {
                    Err(e) => return Begun::Now(Err(e)),
                    Ok(Some(lsn)) => {
                        let s = state.clone();
                        return Begun::Later(Box::pin(async move {
                            reached(&s, lsn).await?;
                            match route.handler {
                                Handler::Now(f) => f(&s, params, req),
                                Handler::Later(f) => f(s.clone(), params, req).await,
                            }
                        }));
                    }
                    Ok(None) => {}
                }
            }
            match route.handler {
                Handler::Now(f) => Begun::Now(f(state, params, req)),
                Handler::Later(f) => {
                    Begun::Later(hub_acked(state, route, f(state.clone(), params, req)))
                }
            }
        }
    }
}

/// How long a read with `min_position` waits for this box to reach it, at most.
pub const MIN_POSITION_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A read's `min_position` (read-your-writes across boxes: the `Shardbox-Position` a write's
/// answer carried): `None` when this box is already there, else the LSN to wait for. A
/// position of another generation is a 409: this box's history is not the one it names.
fn min_position(state: &ServerState, query: &str) -> Result<Option<u64>, ApiError> {
    let Some((_, v)) = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "min_position")
    else {
        return Ok(None);
    };
    let want: crate::engine::feed::Position = v.parse().map_err(|e: String| {
        ApiError::bad_request(format!(
            "min_position: {e}; give the `Shardbox-Position` header of an earlier answer (`<generation>:<lsn>`)"
        ))
    })?;
    let at = state.store.engine().position();
    if want.generation != at.generation {
        return Err(ApiError::new(
            409,
            "generation_mismatch",
            format!(
                "min_position is of generation {}, this box's history is {}: the position is from another history (a restore or a promotion since)",
                want.generation, at.generation
            ),
        ));
    }
    Ok((want.lsn > at.lsn).then_some(want.lsn))
}

/// Waits (at most [`MIN_POSITION_WAIT`], in a long-poll place) until this box's answers reflect
/// record `lsn`; 504 `position_not_reached` past that.
async fn reached(state: &Arc<ServerState>, lsn: u64) -> Result<(), ApiError> {
    let engine = state.store.engine().clone();
    let not_yet = |why: String| {
        let mut e = ApiError::new(504, "position_not_reached", why);
        e.retry_after_s = Some(1);
        e
    };
    let Some(waiting) = state.waiting() else {
        return Err(not_yet(
            "no place to wait for min_position (long_polls_max)".into(),
        ));
    };
    let mut commits = engine.feed().committed.clone();
    let stopping = engine.stopping();
    let wait = async {
        let deadline = tokio::time::Instant::now() + MIN_POSITION_WAIT;
        loop {
            if engine.position().lsn >= lsn {
                return true;
            }
            tokio::select! {
                changed = commits.changed() => if changed.is_err() { return false },
                _ = tokio::time::sleep_until(deadline) => return engine.position().lsn >= lsn,
            }
        }
    };
    let done = waiting
        .unless_closed(async {
            tokio::select! {
                r = wait => r,
                _ = stopping => false,
            }
        })
        .await;
    match done {
        Some(true) => Ok(()),
        Some(false) => Err(not_yet(format!(
            "this box has applied up to record {} and min_position asks for {lsn}: not reached within {} s (is the standby behind, or following another box?)",
            engine.position().lsn,
            MIN_POSITION_WAIT.as_secs()
        ))),
        None => Err(not_yet("the client left".into())),
    }
}

/// With `[sink.nats] ack = "hub"`, a write's successful reply waits until JetStream holds
/// everything committed when the write finished (its own record included), at most
/// `ack_timeout_ms`; past that the reply is 504 `hub_ack_timeout` (the write stays done on
/// this box and ships when the hub is back). Reads and the default `ack = "local"` pass as they
/// are.
fn hub_acked(
    state: &Arc<ServerState>,
    route: &'static RouteDef,
    reply: route_table::Reply,
) -> route_table::Reply {
    let writes = matches!(route.method, "PUT" | "POST" | "DELETE" | "PATCH") && !route.unlogged;
    let Some((sink, timeout)) = state.store.hub_ack().filter(|_| writes) else {
        return reply;
    };
    let (state, sink) = (state.clone(), sink.clone());
    Box::pin(async move {
        let out = reply.await;
        if !out.as_ref().is_ok_and(|r| r.status().is_success()) {
            return out;
        }
        // Everything written to the log by now, this write's record included (under periodic
        // durability a reply comes before the sync; the sink ships the record after it).
        let through = state.store.engine().wal().written_lsn();
        let not_acked = |why: String| {
            let mut e = ApiError::new(
                504,
                "hub_ack_timeout",
                format!("the write is done and durable on this box, but {why}; it ships when the hub takes it (a retry with the same Idempotency-Key is safe)"),
            );
            e.retry_after_s = Some(1);
            Err(e)
        };
        if sink.state() == crate::store::sink::State::ResnapshotRequired {
            return not_acked("the NATS sink cannot ship (resnapshot_required)".into());
        }
        // A waiting place like a long poll's: bounded by long_polls_max, given back when the
        // client leaves or the server stops.
        let Some(waiting) = state.waiting() else {
            return not_acked("no place to wait for the NATS hub (long_polls_max)".into());
        };
        let stopping = state.store.engine().stopping();
        let acked = waiting
            .unless_closed(async {
                tokio::select! {
                    acked = sink.wait_acked(through, timeout) => acked,
                    _ = stopping => false,
                }
            })
            .await;
        match acked {
            Some(true) => out,
            Some(false) => not_acked(format!(
                "the NATS hub did not acknowledge it within ack_timeout_ms ({} ms)",
                timeout.as_millis()
            )),
            // The client left: nobody reads the answer.
            None => out,
        }
    })
}

/// Everything before the handler: the head's refusal, the route, its query, tokens and rate
/// limits.
fn admit(
    state: &Arc<ServerState>,
    mut req: Request<ReqBody>,
    refused: Option<ApiError>,
    t: &mut Ticket,
) -> Result<(&'static RouteDef, route_table::Params, Request<ReqBody>), ApiError> {
    crate::base::failpoint::hit("http.handler")
        .map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
    if let Some(e) = refused {
        return Err(e);
    }
    let hit = router().find(req.method().as_str(), req.uri())?;
    let route = hit.route;
    t.matched = Some((route, hit.index));
    route_table::check_query(route, req.uri().query())?;
    state
        .access
        .admit(route, &hit.params, &mut req, &mut t.headers)?;
    if let Some(access::Caller(Some(name))) = req.extensions().get() {
        tracing::Span::current().record("caller", &**name);
        if state.access_log.is_some() {
            t.caller = Some(name.clone());
        }
    }
    Ok((route, hit.params, req))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_is_unique_and_well_formed() {
        let mut seen = std::collections::BTreeSet::new();
        for (method, path, _) in routes() {
            assert!(path.starts_with('/'), "{path}");
            assert!(seen.insert((method, path)), "{method} {path} twice");
        }
    }

    #[test]
    fn paths_find_their_routes() {
        let f = |m: &str, p: &str| {
            router()
                .find_path(m, p)
                .map(|h| (h.route.method, h.route.path))
        };
        assert_eq!(f("GET", "/v1/kv/app/a/b"), Ok(("GET", "/v1/kv/{ns}/{key}")));
        assert_eq!(
            f("POST", "/v1/kv/app:incr"),
            Ok(("POST", "/v1/kv/{ns}:incr"))
        );
        assert_eq!(f("GET", "/v1/queues/"), Ok(("GET", "/v1/queues")));
        assert_eq!(f("GET", "/v1/cache:stats"), Ok(("GET", "/v1/cache:stats")));
        let e = f("PATCH", "/v1/kv/app/a").unwrap_err();
        assert_eq!(
            (e.status, e.allow.as_deref()),
            (405, Some("GET, HEAD, PUT, DELETE"))
        );
        let e = f("POST", "/v1/kv/app:frob").unwrap_err();
        assert_eq!(e.status, 404);
        assert!(
            e.message.contains(":incr, :batchGet, :batchWrite"),
            "{}",
            e.message
        );
        assert_eq!(f("GET", "/v2/x").unwrap_err().status, 404);
        assert_eq!(f("GET", "/v1/kv/app/%FF").unwrap_err().status, 400);
    }
}
