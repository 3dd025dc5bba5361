//! Request routing: path and method to handler, and the one place errors become responses.

use super::response::{self, Resp};
use super::{cache, events, health, kv, queue, ServerState};
use crate::error::ApiError;
use hyper::body::Incoming;
use hyper::{Method, Request};
use std::convert::Infallible;
use std::sync::Arc;

/// Every (method, path template) the router serves. `docs/openapi.json` must list exactly these
/// (a test checks), and a test sends each one to a live server.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/kv/{ns}/{key}"),
    ("HEAD", "/v1/kv/{ns}/{key}"),
    ("PUT", "/v1/kv/{ns}/{key}"),
    ("DELETE", "/v1/kv/{ns}/{key}"),
    ("GET", "/v1/kv/{ns}"),
    ("DELETE", "/v1/kv/{ns}"),
    ("POST", "/v1/kv/{ns}:incr"),
    ("POST", "/v1/kv/{ns}:batchGet"),
    ("POST", "/v1/kv/{ns}:batchWrite"),
    ("GET", "/v1/cache/{ns}/{key}"),
    ("PUT", "/v1/cache/{ns}/{key}"),
    ("DELETE", "/v1/cache/{ns}/{key}"),
    ("POST", "/v1/cache/{ns}:purge"),
    ("POST", "/v1/cache/{ns}:fillError"),
    ("GET", "/v1/cache/{ns}:stats"),
    ("GET", "/v1/cache:stats"),
    ("GET", "/v1/queues"),
    ("GET", "/v1/queues/{q}"),
    ("PUT", "/v1/queues/{q}"),
    ("POST", "/v1/queues/{q}:pause"),
    ("POST", "/v1/queues/{q}:resume"),
    ("POST", "/v1/queues/{q}/jobs"),
    ("GET", "/v1/queues/{q}/jobs"),
    ("DELETE", "/v1/queues/{q}/jobs"),
    ("POST", "/v1/queues/{q}/claim"),
    ("GET", "/v1/queues/{q}/jobs/{id}"),
    ("DELETE", "/v1/queues/{q}/jobs/{id}"),
    ("POST", "/v1/queues/{q}/jobs/{id}/ack"),
    ("POST", "/v1/queues/{q}/jobs/{id}/nack"),
    ("POST", "/v1/queues/{q}/jobs/{id}/extend"),
    ("POST", "/v1/queues/{q}/dead:requeue"),
    ("GET", "/v1/streams"),
    ("GET", "/v1/streams/{stream}"),
    ("PUT", "/v1/streams/{stream}"),
    ("DELETE", "/v1/streams/{stream}"),
    ("POST", "/v1/streams/{stream}/events"),
    ("GET", "/v1/streams/{stream}/events"),
    ("DELETE", "/v1/streams/{stream}/events"),
    ("GET", "/v1/streams/{stream}/counts"),
    ("GET", "/v1/schedules"),
    ("GET", "/v1/schedules/{name}"),
    ("PUT", "/v1/schedules/{name}"),
    ("DELETE", "/v1/schedules/{name}"),
];

/// The parsed target of a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    Healthz,
    Readyz,
    Metrics,
    /// `/v1/kv/{ns}/{key}` (key percent-decoded).
    KvKey {
        ns: &'a str,
        key: String,
    },
    /// `/v1/kv/{ns}`
    KvNamespace {
        ns: &'a str,
    },
    /// `/v1/kv/{ns}:{verb}`
    KvVerb {
        ns: &'a str,
        verb: &'a str,
    },
    /// `/v1/cache/{ns}/{key}` (key percent-decoded).
    CacheKey {
        ns: &'a str,
        key: String,
    },
    /// `/v1/cache/{ns}:{verb}`
    CacheVerb {
        ns: &'a str,
        verb: &'a str,
    },
    /// `/v1/cache:stats`
    CacheStats,
    /// `/v1/queues`
    Queues,
    /// `/v1/queues/{q}`
    Queue {
        q: &'a str,
    },
    /// `/v1/queues/{q}:{verb}`
    QueueVerb {
        q: &'a str,
        verb: &'a str,
    },
    /// `/v1/queues/{q}/claim`
    QueueClaim {
        q: &'a str,
    },
    /// `/v1/queues/{q}/jobs`
    QueueJobs {
        q: &'a str,
    },
    /// `/v1/queues/{q}/jobs/{id}` and `/v1/queues/{q}/jobs/{id}/{action}`
    QueueJob {
        q: &'a str,
        id: &'a str,
        action: Option<&'a str>,
    },
    /// `/v1/queues/{q}/dead:requeue`
    QueueRequeue {
        q: &'a str,
    },
    /// `/v1/streams`
    Streams,
    /// `/v1/streams/{stream}`
    Stream {
        stream: &'a str,
    },
    /// `/v1/streams/{stream}/events`
    StreamEvents {
        stream: &'a str,
    },
    /// `/v1/streams/{stream}/counts`
    StreamCounts {
        stream: &'a str,
    },
    /// `/v1/schedules`
    Schedules,
    /// `/v1/schedules/{name}`
    Schedule {
        name: &'a str,
    },
}

fn parse_queue<'a>(path: &str, rest: &'a str) -> Result<Route<'a>, ApiError> {
    let unknown = || ApiError::not_found(format!("no such endpoint: {path}"));
    let mut parts = rest.split('/');
    let head = parts.next().unwrap_or_default();
    let tail: Vec<&str> = parts.collect();
    if tail.is_empty() {
        return Ok(match head.split_once(':') {
            Some((q, verb)) => Route::QueueVerb { q, verb },
            None => Route::Queue { q: head },
        });
    }
    let q = head;
    match tail.as_slice() {
        ["claim"] => Ok(Route::QueueClaim { q }),
        ["jobs"] => Ok(Route::QueueJobs { q }),
        ["jobs", id] => Ok(Route::QueueJob {
            q,
            id,
            action: None,
        }),
        ["jobs", id, action] => Ok(Route::QueueJob {
            q,
            id,
            action: Some(action),
        }),
        ["dead:requeue"] => Ok(Route::QueueRequeue { q }),
        _ => Err(unknown()),
    }
}

fn decode_key(raw_key: &str) -> Result<String, ApiError> {
    Ok(percent_encoding::percent_decode_str(raw_key)
        .decode_utf8()
        .map_err(|_| ApiError::bad_request("the key must be UTF-8 after percent-decoding"))?
        .into_owned())
}

/// Parses a request path. Errors are 404s for unknown paths and 400s for bad keys.
pub fn parse(path: &str) -> Result<Route<'_>, ApiError> {
    match path {
        "/healthz" => return Ok(Route::Healthz),
        "/readyz" => return Ok(Route::Readyz),
        "/metrics" => return Ok(Route::Metrics),
        _ => {}
    }
    if path == "/v1/streams" || path == "/v1/streams/" {
        return Ok(Route::Streams);
    }
    if let Some(rest) = path.strip_prefix("/v1/streams/") {
        return match rest.split('/').collect::<Vec<_>>().as_slice() {
            [stream] => Ok(Route::Stream { stream }),
            [stream, "events"] => Ok(Route::StreamEvents { stream }),
            [stream, "counts"] => Ok(Route::StreamCounts { stream }),
            _ => Err(ApiError::not_found(format!("no such endpoint: {path}"))),
        };
    }
    if path == "/v1/schedules" || path == "/v1/schedules/" {
        return Ok(Route::Schedules);
    }
    if let Some(name) = path.strip_prefix("/v1/schedules/") {
        if name.contains('/') {
            return Err(ApiError::not_found(format!("no such endpoint: {path}")));
        }
        return Ok(Route::Schedule { name });
    }
    if path == "/v1/cache:stats" {
        return Ok(Route::CacheStats);
    }
    if let Some(rest) = path.strip_prefix("/v1/cache/") {
        return match rest.split_once('/') {
            Some((ns, raw_key)) if !ns.contains(':') => Ok(Route::CacheKey {
                ns,
                key: decode_key(raw_key)?,
            }),
            Some(_) => Err(ApiError::not_found(format!("no such endpoint: {path}"))),
            None => match rest.split_once(':') {
                Some((ns, verb)) => Ok(Route::CacheVerb { ns, verb }),
                None => Err(ApiError::not_found(format!(
                    "no such endpoint: {path}; use /v1/cache/{{ns}}/{{key}}"
                ))),
            },
        };
    }
    if path == "/v1/queues" || path == "/v1/queues/" {
        return Ok(Route::Queues);
    }
    if let Some(rest) = path.strip_prefix("/v1/queues/") {
        return parse_queue(path, rest);
    }
    let Some(rest) = path.strip_prefix("/v1/kv/") else {
        return Err(ApiError::not_found(format!("no such endpoint: {path}")));
    };
    match rest.split_once('/') {
        Some((ns, raw_key)) => {
            if ns.contains(':') {
                return Err(ApiError::not_found(format!("no such endpoint: {path}")));
            }
            Ok(Route::KvKey {
                ns,
                key: decode_key(raw_key)?,
            })
        }
        None => match rest.split_once(':') {
            Some((ns, verb)) => Ok(Route::KvVerb { ns, verb }),
            None => Ok(Route::KvNamespace { ns: rest }),
        },
    }
}

/// The service function: never fails, every error is a JSON response.
pub async fn handle(state: Arc<ServerState>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    use futures_util::FutureExt;
    // A handler that panics answers a JSON 500 like any other failure (and is counted); the
    // connection and everything it holds are released normally.
    let outcome = std::panic::AssertUnwindSafe(dispatch(&state, req))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %what, "a request handler panicked");
            Err(ApiError::new(
                500,
                "internal",
                "internal error while handling the request (see the server log)",
            ))
        });
    let resp = match outcome {
        Ok(r) => r,
        Err(e) => {
            if e.status >= 500 {
                tracing::warn!(status = e.status, code = e.code, message = %e.message, "request failed");
            }
            response::error(&e)
        }
    };
    crate::metrics::record_status(resp.status().as_u16());
    Ok(resp)
}

async fn dispatch(state: &Arc<ServerState>, req: Request<Incoming>) -> Result<Resp, ApiError> {
    crate::failpoint::hit("http.handler")
        .map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
    let path = req.uri().path().to_string();
    let route = parse(&path)?;
    let method = req.method().clone();
    match (route, &method) {
        (Route::Healthz, &Method::GET | &Method::HEAD) => Ok(health::healthz()),
        (Route::Readyz, &Method::GET | &Method::HEAD) => Ok(health::readyz(state)),
        (Route::Metrics, &Method::GET) => Ok(health::metrics(state)),
        (Route::Healthz | Route::Readyz, _) => Err(not_allowed("GET, HEAD")),
        (Route::Metrics, _) => Err(not_allowed("GET")),
        (Route::KvKey { ns, key }, m) => match *m {
            Method::GET => kv::get(state, ns, &key, &req, false),
            Method::HEAD => kv::get(state, ns, &key, &req, true),
            Method::PUT => kv::put(state, ns, &key, req).await,
            Method::DELETE => kv::delete(state, ns, &key, &req).await,
            _ => Err(not_allowed("GET, HEAD, PUT, DELETE")),
        },
        (Route::KvNamespace { ns }, m) => match *m {
            Method::GET => kv::list(state, ns, &req).await,
            Method::DELETE => kv::delete_prefix(state, ns, &req).await,
            _ => Err(not_allowed("GET, DELETE")),
        },
        (Route::KvVerb { ns, verb }, m) => {
            if *m != Method::POST {
                return Err(not_allowed("POST"));
            }
            match verb {
                "incr" => kv::incr(state, ns, req).await,
                "batchGet" => kv::batch_get(state, ns, req).await,
                "batchWrite" => kv::batch_write(state, ns, req).await,
                other => Err(ApiError::not_found(format!(
                    "unknown operation `:{other}`; use :incr, :batchGet or :batchWrite"
                ))),
            }
        }
        (Route::CacheKey { ns, key }, m) => match *m {
            Method::GET => cache::get(state, ns, &key, &req).await,
            Method::PUT => cache::put(state, ns, &key, req).await,
            Method::DELETE => cache::delete(state, ns, &key).await,
            _ => Err(not_allowed("GET, PUT, DELETE")),
        },
        (Route::CacheVerb { ns, verb }, m) => match (verb, m) {
            ("purge", &Method::POST) => cache::purge(state, ns, req).await,
            ("fillError", &Method::POST) => cache::fill_error(state, ns, req).await,
            ("stats", &Method::GET) => cache::namespace_stats(state, ns).await,
            ("purge" | "fillError", _) => Err(not_allowed("POST")),
            ("stats", _) => Err(not_allowed("GET")),
            (other, _) => Err(ApiError::not_found(format!(
                "unknown operation `:{other}`; use :purge, :fillError or :stats"
            ))),
        },
        (Route::CacheStats, &Method::GET) => cache::stats(state).await,
        (Route::CacheStats, _) => Err(not_allowed("GET")),
        (Route::Queues, &Method::GET) => queue::list_queues(state),
        (Route::Queues, _) => Err(not_allowed("GET")),
        (Route::Queue { q }, m) => match *m {
            Method::GET => queue::stats(state, q),
            Method::PUT => queue::configure(state, q, req).await,
            _ => Err(not_allowed("GET, PUT")),
        },
        (Route::QueueVerb { q, verb }, m) => {
            if *m != Method::POST {
                return Err(not_allowed("POST"));
            }
            match verb {
                "pause" => queue::pause(state, q, true).await,
                "resume" => queue::pause(state, q, false).await,
                other => Err(ApiError::not_found(format!(
                    "unknown queue operation `:{other}`; use :pause or :resume"
                ))),
            }
        }
        (Route::QueueClaim { q }, &Method::POST) => queue::claim(state, q, req).await,
        (Route::QueueClaim { .. }, _) => Err(not_allowed("POST")),
        (Route::QueueJobs { q }, m) => match *m {
            Method::POST => queue::enqueue(state, q, req).await,
            Method::GET => queue::list_jobs(state, q, &req),
            Method::DELETE => queue::purge(state, q, &req).await,
            _ => Err(not_allowed("GET, POST, DELETE")),
        },
        (
            Route::QueueJob {
                q,
                id,
                action: None,
            },
            m,
        ) => match *m {
            Method::GET => queue::get_job(state, q, id),
            Method::DELETE => queue::cancel(state, q, id).await,
            _ => Err(not_allowed("GET, DELETE")),
        },
        (
            Route::QueueJob {
                q,
                id,
                action: Some(action),
            },
            m,
        ) => {
            if *m != Method::POST {
                return Err(not_allowed("POST"));
            }
            queue::job_action(state, q, id, action, req).await
        }
        (Route::QueueRequeue { q }, &Method::POST) => queue::requeue(state, q, req).await,
        (Route::QueueRequeue { .. }, _) => Err(not_allowed("POST")),
        (Route::Streams, &Method::GET) => events::list_streams(state),
        (Route::Streams, _) => Err(not_allowed("GET")),
        (Route::Stream { stream }, m) => match *m {
            Method::GET => events::get_stream(state, stream),
            Method::PUT => events::put_stream(state, stream, req).await,
            Method::DELETE => events::delete_stream(state, stream).await,
            _ => Err(not_allowed("GET, PUT, DELETE")),
        },
        (Route::StreamEvents { stream }, m) => match *m {
            Method::POST => events::append(state, stream, req).await,
            Method::GET => events::range(state, stream, &req).await,
            Method::DELETE => events::trim(state, stream, &req).await,
            _ => Err(not_allowed("GET, POST, DELETE")),
        },
        (Route::StreamCounts { stream }, &Method::GET) => events::counts(state, stream, &req).await,
        (Route::StreamCounts { .. }, _) => Err(not_allowed("GET")),
        (Route::Schedules, &Method::GET) => queue::list_schedules(state),
        (Route::Schedules, _) => Err(not_allowed("GET")),
        (Route::Schedule { name }, m) => match *m {
            Method::GET => queue::get_schedule(state, name),
            Method::PUT => queue::put_schedule(state, name, req).await,
            Method::DELETE => queue::delete_schedule(state, name).await,
            _ => Err(not_allowed("GET, PUT, DELETE")),
        },
    }
}

/// A 405 carrying the allowed methods in `Allow`.
fn not_allowed(allow: &'static str) -> ApiError {
    ApiError {
        allow: Some(allow),
        ..ApiError::new(
            405,
            "method_not_allowed",
            format!("allowed methods: {allow}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(parse("/healthz").unwrap(), Route::Healthz);
        assert_eq!(
            parse("/v1/kv/app/a%2Fb/c").unwrap(),
            Route::KvKey {
                ns: "app",
                key: "a/b/c".into()
            }
        );
        assert_eq!(
            parse("/v1/kv/app").unwrap(),
            Route::KvNamespace { ns: "app" }
        );
        assert_eq!(
            parse("/v1/kv/app:incr").unwrap(),
            Route::KvVerb {
                ns: "app",
                verb: "incr"
            }
        );
        assert_eq!(parse("/v2/x").unwrap_err().status, 404);
        assert_eq!(parse("/v1/kv/app/%FF").unwrap_err().status, 400);
    }

    /// The fuzz target's property, run on random paths in every test run.
    #[test]
    fn random_paths_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet: Vec<char> = "/v1kv:%aF0-_.~ \u{e9}".chars().collect();
        for _ in 0..20_000 {
            let len = rng.random_range(0..40);
            let mut p = String::from(if rng.random_bool(0.7) { "/v1/kv/" } else { "" });
            for _ in 0..len {
                p.push(alphabet[rng.random_range(0..alphabet.len())]);
            }
            if let Ok(Route::KvKey { ns, key }) = parse(&p) {
                let _ = crate::kv::validate_namespace(ns);
                let _ = crate::kv::validate_key(&key);
            }
        }
    }
}
