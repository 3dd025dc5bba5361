//! Cache handlers: parse the request, call the cache domain, render hits, misses and leases.
//!
//! `Cache-Status` follows RFC 9211: `shardbox; hit; ttl=<s>; detail=memory|disk` for a fresh
//! hit, `shardbox; hit; fwd=stale; …` for a stale one, `shardbox; fwd=miss` for a miss, and
//! `collapsed` when the answer is another caller's fill this request waited for.

use super::body;
use super::body::ReqBody;
use super::input::{duration_param, json_body, query};
use super::response::{self, Resp};
use super::route_table::{route, RouteDef};
use super::ServerState;
use crate::cache::{Freshness, Lease, Lookup, PurgeTarget, PutOptions};
use crate::http::error::ApiError;
use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue, AGE, CONTENT_TYPE};
use hyper::Request;
use serde::Deserialize;
use std::time::Duration;

/// The cache routes.
pub(super) const ROUTES: &[RouteDef] = &[
    route!(
        "GET",
        "/v1/cache/{ns}/{key}",
        ["wait", "lease"],
        |s, p, r| get(&s, p.get("ns"), p.get("key"), &r).await
    ),
    route!(
        "PUT",
        "/v1/cache/{ns}/{key}",
        ["ttl", "swr", "sie", "tags"],
        |s, p, r| put(&s, p.get("ns"), p.get("key"), r).await
    ),
    route!("DELETE", "/v1/cache/{ns}/{key}", [], |s, p, r| delete(
        &s,
        p.get("ns"),
        p.get("key")
    )
    .await),
    route!("POST", "/v1/cache/{ns}:purge", [], |s, p, r| purge(
        &s,
        p.get("ns"),
        r
    )
    .await),
    route!("POST", "/v1/cache/{ns}:fillError", [], |s, p, r| {
        fill_error(&s, p.get("ns"), r).await
    }),
    route!("GET", "/v1/cache/{ns}:stats", [], |s, p, r| {
        namespace_stats(&s, p.get("ns")).await
    }),
    route!("GET", "/v1/cache:stats", [], |s, p, r| stats(&s).await),
];

const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
const X_CACHE_FILL: HeaderName = HeaderName::from_static("x-cache-fill");
const CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");

fn lease_header(lease: &Lease) -> Option<HeaderValue> {
    match lease {
        Lease::Granted(t) => HeaderValue::from_str(t).ok(),
        Lease::Pending => Some(HeaderValue::from_static("pending")),
        Lease::None | Lease::Unavailable => None,
    }
}

pub async fn get(
    state: &ServerState,
    ns: &str,
    key: &str,
    req: &Request<ReqBody>,
) -> Result<Resp, ApiError> {
    let q = query(req);
    let wait = duration_param(&q, "wait")?.map(Duration::from_millis);
    // `lease=false`: a reader that will not fill takes no fill lease.
    let lease = super::input::bool_param(&q, "lease", true)?;
    let cache = state.store.cache().await?;
    let read = |wait| async move {
        if lease {
            cache.get(ns, key, wait).await
        } else {
            cache.peek(ns, key, wait).await
        }
    };
    // A waiter holds one of long_polls_max places (beyond them it does not wait) and watches
    // its client: one that hung up is no longer parked (nor handed a lease).
    let waiting = wait.and_then(|_| state.waiting());
    let lookup = match &waiting {
        Some(w) => w.unless_closed(read(wait)).await.ok_or_else(|| {
            ApiError::unavailable(
                "client_closed",
                "the client closed the connection while it waited",
            )
        })?,
        None => read(None).await,
    };
    drop(waiting);
    // After the wait: the entry's TTL as it is now, not as it was before the wait.
    let now = state.store.engine().now_ms();
    match lookup? {
        Lookup::Hit {
            entry,
            tier,
            freshness,
            lease,
            collapsed,
        } => {
            let mut r = response::value(entry.value.clone(), entry.content_type.as_deref());
            let h = r.headers_mut();
            h.insert(
                AGE,
                HeaderValue::from(now.saturating_sub(entry.stored_at_ms) / 1000),
            );
            let ttl_s = (entry.expires_at_ms as i128 - now as i128).div_euclid(1000);
            // Written into one buffer (every hit sends it: no `format!`, one allocation).
            let mut status = Vec::with_capacity(96);
            status.extend_from_slice(b"shardbox; hit");
            match freshness {
                Freshness::Fresh => {}
                Freshness::Stale => status.extend_from_slice(b"; fwd=stale"),
                Freshness::StaleIfError => status.extend_from_slice(b"; fwd=stale; fwd-status=500"),
            }
            if collapsed {
                status.extend_from_slice(b"; collapsed");
            }
            status.extend_from_slice(b"; ttl=");
            status.extend_from_slice(itoa::Buffer::new().format(ttl_s).as_bytes());
            status.extend_from_slice(b"; detail=");
            status.extend_from_slice(tier.as_str().as_bytes());
            if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(status)) {
                h.insert(CACHE_STATUS, v);
            }
            if let Some(v) = lease_header(&lease) {
                h.insert(X_CACHE_FILL, v);
            }
            Ok(r)
        }
        Lookup::Miss { lease } => {
            let message = match lease {
                Lease::Granted(_) => {
                    "cache miss; you hold the fill lease: PUT the value with X-Cache-Fill: <token>"
                }
                Lease::Pending => {
                    "cache miss; another caller is filling it (retry, or GET with ?wait=2s)"
                }
                _ => "cache miss",
            };
            let mut r = response::error(&ApiError::new(404, "cache_miss", message));
            let h = r.headers_mut();
            h.insert(CACHE_STATUS, HeaderValue::from_static("shardbox; fwd=miss"));
            if let Some(v) = lease_header(&lease) {
                h.insert(X_CACHE_FILL, v);
            }
            Ok(r)
        }
    }
}

pub async fn put(
    state: &ServerState,
    ns: &str,
    key: &str,
    req: Request<ReqBody>,
) -> Result<Resp, ApiError> {
    crate::base::names::validate_name("namespace", ns)?;
    crate::base::names::validate_key(key)?;
    let q = query(&req);
    let ttl_ms = duration_param(&q, "ttl")?;
    let swr_ms = duration_param(&q, "swr")?.unwrap_or(0);
    let sie_ms = duration_param(&q, "sie")?.unwrap_or(0);
    let mut tags: Vec<String> = Vec::new();
    let header_tags = match req.headers().get(&CACHE_TAG) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_request("Cache-Tag must be visible ASCII"))?
                .to_string(),
        ),
        None => None,
    };
    for list in [header_tags.as_deref(), q.get("tags").map(String::as_str)]
        .into_iter()
        .flatten()
    {
        tags.extend(
            list.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string),
        );
    }
    let fill_token = match req.headers().get(&X_CACHE_FILL) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_request("X-Cache-Fill must be the lease token"))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let content_type = match req.headers().get(CONTENT_TYPE) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_request("Content-Type must be visible ASCII"))?
                .to_string(),
        ),
        None => None,
    };
    let cache = state.store.cache().await?;
    let cfg = state.store.config();
    let (parts, body) = req.into_parts();
    let body = body::read(
        &parts.headers,
        body,
        cache.settings().value_bytes_max,
        &state.body_budget,
        Duration::from_millis(cfg.http.body_read_timeout_ms),
        "the cached value (cache_value_bytes_max)",
    )
    .await?;
    let opts = PutOptions {
        ttl_ms,
        swr_ms,
        sie_ms,
        tags,
        content_type,
        fill_token,
    };
    cache.put(ns, key, Bytes::copy_from_slice(&body.bytes), opts)?;
    Ok(response::empty(204))
}

pub async fn delete(state: &ServerState, ns: &str, key: &str) -> Result<Resp, ApiError> {
    state.store.cache().await?.delete(ns, key)?;
    Ok(response::empty(204))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeReq {
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    all: bool,
}

pub async fn purge(state: &ServerState, ns: &str, req: Request<ReqBody>) -> Result<Resp, ApiError> {
    crate::base::names::validate_name("namespace", ns)?;
    let body: PurgeReq = json_body(state, req).await?;
    let (target, label) = match (body.all, body.tags) {
        (true, None) => (PurgeTarget::Namespace, "namespace"),
        (false, Some(tags)) => (PurgeTarget::Tags(tags), "tags"),
        (true, Some(_)) => {
            return Err(ApiError::bad_request(
                "send {\"tags\":[…]} or {\"all\":true}, not both",
            ))
        }
        (false, None) => return Err(ApiError::bad_request(
            "send {\"tags\":[\"a\",\"b\"]} to purge tags or {\"all\":true} to purge the namespace",
        )),
    };
    state.store.cache().await?.purge(ns, target).await?;
    Ok(response::json(200, &serde_json::json!({"purged": label})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FillErrorReq {
    key: String,
    token: String,
}

pub async fn fill_error(
    state: &ServerState,
    ns: &str,
    req: Request<ReqBody>,
) -> Result<Resp, ApiError> {
    crate::base::names::validate_name("namespace", ns)?;
    let body: FillErrorReq = json_body(state, req).await?;
    let serving = state
        .store
        .cache()
        .await?
        .fill_error(ns, &body.key, &body.token)
        .await?;
    Ok(response::json(
        200,
        &serde_json::json!({"serving_stale": serving}),
    ))
}

pub async fn namespace_stats(state: &ServerState, ns: &str) -> Result<Resp, ApiError> {
    let v = state.store.cache().await?.namespace_stats(ns)?;
    Ok(response::json(200, &v))
}

pub async fn stats(state: &ServerState) -> Result<Resp, ApiError> {
    let v = state.store.cache().await?.stats();
    Ok(response::json(200, &v))
}
