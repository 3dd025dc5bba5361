//! `Idempotency-Key` on the POSTs that create something (enqueue, append, batch write, incr):
//! the first successful response is kept (through the shard writer, durable, for
//! `idempotency_ttl_ms`) and replayed to a retry with the same key and the same request.
//!
//! - Same key, same request (method, path and query, content type, body): the kept response,
//!   with `Idempotent-Replayed: true`; nothing runs again.
//! - Same key, different request: 422 `idempotency_key_reused`.
//! - Same key while its first request still runs: 409 `idempotency_key_in_use`, `Retry-After`.
//! - A first request that fails (4xx/5xx) keeps nothing: it created nothing, and its retry runs.
//!
//! Keys are per caller (token name), so one token never replays another's response. Once its
//! body is read, the first request runs to the end and its response is kept even if the client
//! hangs up, so a retry after a dropped connection finds it.

use super::body::ReqBody;
use super::response::{self, Resp};
use super::route_table::{Params, RouteDef};
use super::{access, input, ServerState};
use crate::http::error::ApiError;
use crate::idempotency::{self, Stored, KEY_BYTES_MAX};
use http_body_util::BodyExt;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tracing::Instrument;

pub static HEADER: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("idempotency-key");

/// Runs `route` for a request that carries `Idempotency-Key` (`key`), or replays its kept
/// response.
pub(super) async fn run(
    state: &Arc<ServerState>,
    route: &'static RouteDef,
    params: Params,
    req: Request<ReqBody>,
    key: &HeaderValue,
) -> Result<Resp, ApiError> {
    let key = parse_key(key)?;
    let caller = req
        .extensions()
        .get::<access::Caller>()
        .and_then(|c| c.0.clone());
    let record = idempotency::record_key(caller.as_deref().unwrap_or(""), key);
    let (parts, b) = req.into_parts();
    let body = input::json_bytes(state, &parts.headers, b).await?;
    let fingerprint = fingerprint(&parts, &body.bytes);
    let idem = state.store.idempotency();
    if let Some(kept) = idem.get(&record)? {
        return replay(kept, &fingerprint, key);
    }
    // The first runs of keyed requests are tasks of their own: bounded (a client that sends
    // and hangs up in a loop cannot pile them up), and waited for at shutdown.
    let Ok(task_permit) = state.idempotent_tasks.clone().try_acquire_owned() else {
        return Err(ApiError::unavailable(
            "overloaded",
            "too many Idempotency-Key requests are running (connections_max); retry",
        ));
    };
    let Some(running) = idem.begin(record.clone()) else {
        crate::base::metrics::IDEMPOTENT_IN_PROGRESS.inc();
        let mut e = ApiError::new(
            409,
            "idempotency_key_in_use",
            format!("a request with Idempotency-Key `{key}` is still running; retry when it has answered"),
        );
        e.retry_after_s = Some(1);
        return Err(e);
    };
    // Kept between the first look and taking the key by a request that just finished.
    if let Some(kept) = idem.get(&record)? {
        return replay(kept, &fingerprint, key);
    }
    let req = Request::from_parts(parts, ReqBody::Buffered(body));
    let state = state.clone();
    // Its own task: a client that hangs up does not cancel the request half-way between its
    // effect and keeping its response.
    let task = tokio::spawn(
        async move {
            let _running = running;
            let _permit = task_permit;
            let resp = route.handler.run(state.clone(), params, req).await?;
            if !resp.status().is_success() {
                return Ok(resp);
            }
            let (parts, b) = resp.into_parts();
            let bytes = match b.collect().await {
                Ok(c) => c.to_bytes(),
                Err(never) => match never {},
            };
            let headers = parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
                .collect();
            let idem = state.store.idempotency();
            let expires = state.store.engine().now_ms().saturating_add(idem.ttl_ms());
            let kept = Stored::new(
                fingerprint,
                expires,
                parts.status.as_u16(),
                headers,
                bytes.to_vec(),
            );
            if let Err(e) = idem.save(record, kept).await {
                // The effect happened; answering it is right. A retry would run it again
                // (documented: the disk filled, or the shard failed, between the two commits).
                tracing::warn!(error = %e, "the response to an Idempotency-Key request could not be kept");
            }
            Ok(Response::from_parts(parts, response::full(bytes)))
        }
        .instrument(tracing::Span::current()),
    );
    match task.await {
        Ok(r) => r,
        Err(e) => Err(ApiError::task_failed(
            "an Idempotency-Key request's task",
            e,
        )),
    }
}

/// The key: 1–255 visible ASCII characters, bare or as a quoted string (the IETF draft's
/// structured-field form, `"…"`).
fn parse_key(v: &HeaderValue) -> Result<&str, ApiError> {
    let s = v.to_str().unwrap_or("");
    let s = s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s);
    if s.is_empty() || s.len() > KEY_BYTES_MAX || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::bad_request(format!(
            "Idempotency-Key must be 1-{KEY_BYTES_MAX} visible ASCII characters (a UUID is a good key)"
        )));
    }
    Ok(s)
}

/// What a retry must repeat: method, path and query, content type and body.
fn fingerprint(parts: &hyper::http::request::Parts, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(parts.method.as_str());
    h.update([0]);
    h.update(parts.uri.path_and_query().map_or("", |p| p.as_str()));
    h.update([0]);
    h.update(
        parts
            .headers
            .get(CONTENT_TYPE)
            .map_or(&b""[..], |v| v.as_bytes()),
    );
    h.update([0]);
    h.update(body);
    h.finalize().into()
}

fn replay(kept: Stored, fingerprint: &[u8; 32], key: &str) -> Result<Resp, ApiError> {
    if &kept.request_sha256 != fingerprint {
        crate::base::metrics::IDEMPOTENT_MISMATCHES.inc();
        return Err(ApiError::new(
            422,
            "idempotency_key_reused",
            format!(
                "Idempotency-Key `{key}` was first used with a different request (method, path, query, content type or body); a retry must repeat the request exactly, and a new request needs a new key"
            ),
        ));
    }
    crate::base::metrics::IDEMPOTENT_REPLAYS.inc();
    let mut r = Response::new(response::full(kept.body));
    *r.status_mut() = hyper::StatusCode::from_u16(kept.status).unwrap_or(hyper::StatusCode::OK);
    let h = r.headers_mut();
    for (n, v) in &kept.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_bytes(v),
        ) {
            h.append(n, v);
        }
    }
    h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_bare_or_quoted_within_bounds() {
        let k = |s: &str| {
            parse_key(&HeaderValue::from_str(s).unwrap())
                .map(str::to_string)
                .map_err(|e| e.status)
        };
        assert_eq!(k("abc-123").as_deref(), Ok("abc-123"));
        assert_eq!(k("\"abc\"").as_deref(), Ok("abc"));
        assert_eq!(k(""), Err(400));
        assert_eq!(k("\"\""), Err(400));
        assert_eq!(k("a b"), Err(400));
        assert_eq!(k(&"x".repeat(255)).map(|s| s.len()), Ok(255));
        assert_eq!(k(&"x".repeat(256)), Err(400));
    }

    #[test]
    fn fingerprint_covers_method_path_query_type_and_body() {
        let parts = |m: &str, u: &str, ct: &str| {
            let (p, _) = Request::builder()
                .method(m)
                .uri(u)
                .header(CONTENT_TYPE, ct)
                .body(())
                .unwrap()
                .into_parts();
            p
        };
        let base = fingerprint(&parts("POST", "/v1/q/a?x=1", "application/json"), b"{}");
        assert_eq!(
            base,
            fingerprint(&parts("POST", "/v1/q/a?x=1", "application/json"), b"{}")
        );
        assert_ne!(
            base,
            fingerprint(&parts("PUT", "/v1/q/a?x=1", "application/json"), b"{}")
        );
        assert_ne!(
            base,
            fingerprint(&parts("POST", "/v1/q/b?x=1", "application/json"), b"{}")
        );
        assert_ne!(
            base,
            fingerprint(&parts("POST", "/v1/q/a?x=2", "application/json"), b"{}")
        );
        assert_ne!(
            base,
            fingerprint(&parts("POST", "/v1/q/a?x=1", "application/x-ndjson"), b"{}")
        );
        assert_ne!(
            base,
            fingerprint(&parts("POST", "/v1/q/a?x=1", "application/json"), b"{ }")
        );
    }
}
