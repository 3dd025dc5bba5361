//! Request routing: the domains' route tables, and the one place errors become responses.

use super::body::ReqBody;
use super::response::{self, Resp};
use super::route_table::{self, RouteDef};
use super::{
    access, access_log, admin, cache, events, health, kv, queue, retries, status, ServerState,
};
use crate::http::error::ApiError;
use hyper::Request;
use std::convert::Infallible;
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
];

/// The route `method path` reaches, `Ok(None)` for a 404/405 and `Err` for a malformed path:
/// the matching of [`handle`], for the fuzz targets.
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
pub fn find_route(method: &str, path: &str) -> Result<Option<&'static RouteDef>, ApiError> {
    match route_table::find(TABLES, method, path) {
        Ok((r, _)) => Ok(Some(r)),
        Err(e) if e.status == 404 || e.status == 405 => Ok(None),
        Err(e) => Err(e),
    }
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

/// The service function: never fails, every error is a JSON response.
pub async fn handle(state: Arc<ServerState>, req: Request<ReqBody>) -> Result<Resp, Infallible> {
    use futures_util::FutureExt;
    use tracing::Instrument;
    let id = access::request_id(req.headers());
    let span = request_span(&id, &req);
    let mut headers = hyper::HeaderMap::new();
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let started = std::time::Instant::now();
    // The route once matched: the labels of the request metrics; the caller once known.
    let mut matched: Option<&'static RouteDef> = None;
    let mut caller: Option<Arc<str>> = None;
    // A handler that panics answers a JSON 500 like any other failure (and is counted); the
    // connection and everything it holds are released normally.
    let outcome = std::panic::AssertUnwindSafe(
        dispatch(&state, req, &mut headers, &mut matched, &mut caller).instrument(span.clone()),
    )
    .catch_unwind()
    .await
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(panic = %what, "a request handler panicked");
        Err(ApiError::internal())
    });
    let mut resp = match outcome {
        Ok(r) => r,
        Err(e) => {
            if e.status >= 500 {
                // The line names the request itself: most requests carry no span.
                tracing::warn!(
                    id = %String::from_utf8_lossy(id.as_bytes()),
                    method = %method,
                    path = %uri.path(),
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
                    method: method.to_string(),
                    path: uri.path().chars().take(256).collect(),
                    message: e.message.chars().take(512).collect(),
                    request_id: String::from_utf8_lossy(id.as_bytes()).into_owned(),
                });
            }
            response::error(&e)
        }
    };
    let took = started.elapsed();
    let status = resp.status().as_u16();
    crate::base::metrics::record_status(status);
    crate::base::metrics::families::record_request(
        matched.map_or("unmatched", |r| r.path),
        // An unmatched request's method is whatever the client sent: not a label.
        matched.map_or("-", |r| r.method),
        status,
        took,
    );
    if let Some(log) = &state.access_log {
        use hyper::body::Body as _;
        log.record(&access_log::Entry {
            id: id.as_bytes(),
            caller: caller.as_deref(),
            ip: access::ConnCtx::ip(),
            method: method.as_str(),
            route: matched.map_or("-", |r| r.path),
            path: uri.path(),
            status,
            bytes: resp.body().size_hint().exact(),
            took,
        });
    }
    let h = resp.headers_mut();
    h.extend(headers);
    h.insert("x-request-id", id);
    Ok(resp)
}

/// The `request` span (id, method, path, caller) over a request's handling — made only where a
/// line it would carry can be written: for every request when `shardbox=debug` (or finer) is
/// on, else only for the admin routes and `Idempotency-Key` runs, which log their work at info
/// and warn. Anywhere else a span would be formatted on every request for lines that are never
/// written (≈ 1.5 µs of a hot GET's 16 µs); a failure's own line names the request instead.
fn request_span(id: &hyper::header::HeaderValue, req: &Request<ReqBody>) -> tracing::Span {
    let wanted = tracing::enabled!(target: "shardbox::request", tracing::Level::DEBUG)
        || req.uri().path().starts_with("/v1/admin")
        || req.headers().contains_key(retries::HEADER);
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

async fn dispatch(
    state: &Arc<ServerState>,
    mut req: Request<ReqBody>,
    headers: &mut hyper::HeaderMap,
    matched: &mut Option<&'static RouteDef>,
    caller: &mut Option<Arc<str>>,
) -> Result<Resp, ApiError> {
    crate::base::failpoint::hit("http.handler")
        .map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
    check_framing(&req)?;
    let (route, params) = route_table::find(TABLES, req.method().as_str(), req.uri().path())?;
    *matched = Some(route);
    route_table::check_query(route, req.uri().query())?;
    state.access.admit(route, &params, &mut req, headers)?;
    if let Some(access::Caller(Some(name))) = req.extensions().get() {
        tracing::Span::current().record("caller", &**name);
        if state.access_log.is_some() {
            *caller = Some(name.clone());
        }
    }
    if route.idempotent {
        if let Some(key) = req.headers().get(retries::HEADER).cloned() {
            return retries::run(state, route, params, req, &key).await;
        }
    }
    (route.handler)(state.clone(), params, req).await
}

/// What hyper leaves to the application (RFC 9112 §3.2, §6.1; RFC 9110 §8.4): exactly one
/// `Host` on HTTP/1.1, no transfer coding but `chunked`, no content coding on a request body (a
/// stored value would be the compressed bytes).
fn check_framing(req: &Request<ReqBody>) -> Result<(), ApiError> {
    use hyper::header::{CONTENT_ENCODING, HOST, TRANSFER_ENCODING};
    let hosts = req.headers().get_all(HOST).iter().count();
    if hosts > 1 || (hosts == 0 && req.version() == hyper::Version::HTTP_11) {
        return Err(ApiError::bad_request(format!(
            "an HTTP/1.1 request needs exactly one Host header, got {hosts}"
        )));
    }
    // Framing a proxy in front may read differently is refused (request smuggling): chunked
    // applied twice. (Two `Content-Length`s never get here: hyper folds equal values into one
    // and refuses different ones itself.)
    let mut chunked = 0;
    for te in req.headers().get_all(TRANSFER_ENCODING) {
        let te = te.to_str().unwrap_or("?");
        for c in te.split(',').map(str::trim) {
            if !c.eq_ignore_ascii_case("chunked") {
                return Err(ApiError::new(
                    501,
                    "not_implemented",
                    format!("Transfer-Encoding `{te}`: only chunked is supported"),
                ));
            }
            chunked += 1;
        }
    }
    if chunked > 1 {
        return Err(ApiError::bad_request(
            "Transfer-Encoding names chunked more than once: send it once",
        ));
    }
    if let Some(expect) = req.headers().get(hyper::header::EXPECT) {
        if !expect.as_bytes().eq_ignore_ascii_case(b"100-continue") {
            return Err(ApiError::new(
                417,
                "expectation_failed",
                "only `Expect: 100-continue` is supported",
            ));
        }
    }
    let has_body = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || req.headers().contains_key(TRANSFER_ENCODING);
    for ce in req
        .headers()
        .get_all(CONTENT_ENCODING)
        .iter()
        .filter(|_| has_body)
    {
        let ce = ce.to_str().unwrap_or("?");
        if !ce.trim().eq_ignore_ascii_case("identity") {
            return Err(ApiError::new(
                415,
                "unsupported_media_type",
                format!("Content-Encoding `{ce}` is not supported; send the body uncompressed"),
            ));
        }
    }
    Ok(())
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
        let f = |m: &str, p: &str| route_table::find(TABLES, m, p).map(|(r, _)| (r.method, r.path));
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
