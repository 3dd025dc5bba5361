//! KV handlers: parse the request, call the KV domain, render the answer.

use super::body;
use super::body::ReqBody;
use super::input::{duration, json_body, limit_param, query};
use super::response::{self, Resp};
use super::route_table::{route, RouteDef};
use super::ServerState;
use crate::http::error::ApiError;
use crate::kv::KvError;
use crate::kv::{self, BatchOp, BatchOpResult, Cond, PutOptions};
use base64::Engine as _;
use hyper::header::{
    HeaderName, HeaderValue, CONTENT_TYPE, ETAG, EXPIRES, IF_MATCH, IF_NONE_MATCH,
};
use hyper::{HeaderMap, Request};
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;

/// The KV routes.
pub(super) const ROUTES: &[RouteDef] = &[
    route!(now "GET", "/v1/kv/{ns}/{key}", ["min_position"], |s, p, r| get(
        s,
        p.get("ns"),
        p.get("key"),
        &r,
        false
    )),
    route!(now "HEAD", "/v1/kv/{ns}/{key}", ["min_position"], |s, p, r| get(
        s,
        p.get("ns"),
        p.get("key"),
        &r,
        true
    )),
    route!("PUT", "/v1/kv/{ns}/{key}", ["ttl"], |s, p, r| put(
        &s,
        p.get("ns"),
        p.get("key"),
        r
    )
    .await),
    route!("DELETE", "/v1/kv/{ns}/{key}", [], |s, p, r| delete(
        &s,
        p.get("ns"),
        p.get("key"),
        &r
    )
    .await),
    route!(
        "GET",
        "/v1/kv/{ns}",
        ["prefix", "after", "limit", "min_position"],
        |s, p, r| list(&s, p.get("ns"), &r).await
    ),
    route!("DELETE", "/v1/kv/{ns}", ["prefix", "all"], |s, p, r| {
        delete_prefix(&s, p.get("ns"), &r).await
    }),
    route!(idempotent "POST", "/v1/kv/{ns}:incr", [], |s, p, r| incr(
        &s,
        p.get("ns"),
        r
    )
    .await),
    route!(unlogged "POST", "/v1/kv/{ns}:batchGet", [], |s, p, r| batch_get(
        &s,
        p.get("ns"),
        r
    )
    .await),
    route!(idempotent "POST", "/v1/kv/{ns}:batchWrite", [], |s, p, r| batch_write(
        &s,
        p.get("ns"),
        r
    )
    .await),
];

const X_EXPIRES_AT: HeaderName = HeaderName::from_static("x-expires-at");
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn etag(revision: u64) -> HeaderValue {
    // `"<revision>"`, formatted in place (no `format!`: it runs on every read).
    let mut buf = [0u8; 22];
    let mut digits = itoa::Buffer::new();
    let text = digits.format(revision).as_bytes();
    buf[0] = b'"';
    buf[1..=text.len()].copy_from_slice(text);
    buf[text.len() + 1] = b'"';
    HeaderValue::from_bytes(&buf[..text.len() + 2]).unwrap_or(HeaderValue::from_static("\"0\""))
}

fn header_str(headers: &HeaderMap, name: HeaderName) -> Result<Option<&str>, ApiError> {
    match headers.get(&name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| ApiError::bad_request(format!("{name} must be visible ASCII"))),
    }
}

/// Parses one entity tag `"<rev>"` (quotes and a `W/` prefix optional).
fn parse_etag(text: &str, header: &str) -> Result<u64, ApiError> {
    let t = text.trim().trim_start_matches("W/").trim_matches('"');
    t.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "{header} must be \"<revision>\" (the ETag you got) or *, got `{text}`"
        ))
    })
}

/// The write precondition from `If-Match` / `If-None-Match`.
fn write_cond(headers: &HeaderMap) -> Result<Cond, ApiError> {
    let if_match = header_str(headers, IF_MATCH)?;
    let if_none = header_str(headers, IF_NONE_MATCH)?;
    match (if_match, if_none) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "send If-Match or If-None-Match, not both",
        )),
        (Some("*"), None) => Ok(Cond::IfExists),
        (Some(m), None) => Ok(Cond::IfRevision(parse_etag(m, "If-Match")?)),
        (None, Some("*")) => Ok(Cond::IfAbsent),
        (None, Some(other)) => Err(ApiError::bad_request(format!(
            "on writes If-None-Match only supports *, got `{other}`"
        ))),
        (None, None) => Ok(Cond::None),
    }
}

fn ttl_param(q: &HashMap<String, String>) -> Result<Option<u64>, ApiError> {
    match q.get("ttl") {
        None => Ok(None),
        Some(t) => ttl_value(t).map(Some),
    }
}

fn ttl_value(t: &str) -> Result<u64, ApiError> {
    let ms = duration("ttl", t)?;
    if ms == 0 {
        return Err(ApiError::bad_request("ttl must be greater than zero"));
    }
    Ok(ms)
}

pub fn get(
    state: &ServerState,
    ns: &str,
    key: &str,
    req: &Request<ReqBody>,
    head: bool,
) -> Result<Resp, ApiError> {
    let value = state.store.kv().get(ns, key)?.ok_or(KvError::NotFound)?;
    let tag = etag(value.revision);
    if let Some(inm) = header_str(req.headers(), IF_NONE_MATCH)? {
        let hit = inm == "*"
            || inm
                .split(',')
                .any(|t| parse_etag(t, "If-None-Match").ok() == Some(value.revision));
        if hit {
            let mut r = response::empty(304);
            r.headers_mut().insert(ETAG, tag);
            return Ok(r);
        }
    }
    let len = value.payload.len();
    let mut r = response::value(value.payload, value.content_type.as_deref());
    let h = r.headers_mut();
    h.insert(ETAG, tag);
    if let Some(t) = value.expires_at_ms {
        h.insert(X_EXPIRES_AT, HeaderValue::from(t));
        if let Some(v) =
            crate::base::util::http_date(t).and_then(|d| HeaderValue::from_str(&d).ok())
        {
            h.insert(EXPIRES, v);
        }
    }
    Ok(if head { response::head_of(r, len) } else { r })
}

pub async fn put(
    state: &ServerState,
    ns: &str,
    key: &str,
    req: Request<ReqBody>,
) -> Result<Resp, ApiError> {
    // Validate everything cheap before reading the body.
    kv::validate_namespace(ns)?;
    kv::validate_key(key)?;
    let q = query(&req);
    let ttl_ms = ttl_param(&q)?;
    let cond = write_cond(req.headers())?;
    let content_type = header_str(req.headers(), CONTENT_TYPE)?.map(str::to_string);
    let cfg = state.store.config();
    let (parts, body) = req.into_parts();
    let body = body::read(
        &parts.headers,
        body,
        cfg.kv.value_bytes_max,
        &state.body_budget,
        Duration::from_millis(cfg.http.body_read_timeout_ms),
        "the value",
    )
    .await?;
    let opts = PutOptions {
        ttl_ms,
        content_type,
        cond,
    };
    let res = state
        .store
        .kv()
        .put(ns, key, body.bytes.clone(), opts)
        .await?;
    #[derive(serde::Serialize)]
    struct Put {
        revision: u64,
    }
    let mut r = response::json_of(
        if res.created { 201 } else { 200 },
        &Put {
            revision: res.revision,
        },
    );
    r.headers_mut().insert(ETAG, etag(res.revision));
    Ok(r)
}

pub async fn delete(
    state: &ServerState,
    ns: &str,
    key: &str,
    req: &Request<ReqBody>,
) -> Result<Resp, ApiError> {
    let cond = write_cond(req.headers())?;
    if cond == Cond::IfAbsent {
        return Err(ApiError::bad_request(
            "If-None-Match has no meaning on DELETE",
        ));
    }
    state.store.kv().delete(ns, key, cond).await?;
    Ok(response::empty(204))
}

pub async fn list(state: &ServerState, ns: &str, req: &Request<ReqBody>) -> Result<Resp, ApiError> {
    let q = query(req);
    let prefix = q.get("prefix").cloned().unwrap_or_default();
    let limit = limit_param(&q)?;
    let after = match q.get("after") {
        None => None,
        Some(c) if c.is_empty() => None,
        Some(c) => Some(kv::list_cursor(c)?),
    };
    let page = state.store.kv().list(ns, &prefix, after, limit).await?;
    Ok(response::json_of(200, &page))
}

pub async fn delete_prefix(
    state: &ServerState,
    ns: &str,
    req: &Request<ReqBody>,
) -> Result<Resp, ApiError> {
    let q = query(req);
    let prefix = q.get("prefix").cloned().unwrap_or_default();
    let all = super::input::bool_param(&q, "all", false)?;
    if prefix.is_empty() && !all {
        return Err(ApiError::bad_request(
            "deleting with an empty prefix deletes the whole namespace: add &all=true to confirm",
        ));
    }
    let deleted = state.store.kv().delete_prefix(ns, &prefix).await?;
    Ok(response::json(
        200,
        &serde_json::json!({"deleted": deleted}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IncrReq {
    key: String,
    #[serde(default = "one")]
    by: i64,
    ttl: Option<String>,
}

fn one() -> i64 {
    1
}

pub async fn incr(state: &ServerState, ns: &str, req: Request<ReqBody>) -> Result<Resp, ApiError> {
    kv::validate_namespace(ns)?;
    let r: IncrReq = json_body(state, req).await?;
    let ttl = r.ttl.as_deref().map(ttl_value).transpose()?;
    let (value, revision) = state.store.kv().incr(ns, &r.key, r.by, ttl).await?;
    #[derive(serde::Serialize)]
    struct Incr {
        value: i64,
        revision: u64,
    }
    Ok(response::json_of(200, &Incr { value, revision }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchGetReq {
    keys: Vec<String>,
}

pub async fn batch_get(
    state: &ServerState,
    ns: &str,
    req: Request<ReqBody>,
) -> Result<Resp, ApiError> {
    kv::validate_namespace(ns)?;
    let r: BatchGetReq = json_body(state, req).await?;
    let values = state.store.kv().batch_get(ns, &r.keys)?;
    let mut items = serde_json::Map::with_capacity(r.keys.len());
    for (key, value) in r.keys.into_iter().zip(values) {
        let v = match value {
            None => serde_json::Value::Null,
            Some(v) => serde_json::json!({
                "value_b64": B64.encode(&v.payload),
                "revision": v.revision,
                "expires_at": v.expires_at_ms,
            }),
        };
        items.insert(key, v);
    }
    Ok(response::json(200, &serde_json::json!({"items": items})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchWriteReq {
    #[serde(deserialize_with = "crate::base::json_object::objects")]
    ops: Vec<BatchWriteOp>,
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum BatchWriteOp {
    Put {
        key: String,
        value_b64: String,
        ttl: Option<String>,
        if_revision: Option<u64>,
    },
    Delete {
        key: String,
        if_revision: Option<u64>,
    },
}

pub async fn batch_write(
    state: &ServerState,
    ns: &str,
    req: Request<ReqBody>,
) -> Result<Resp, ApiError> {
    kv::validate_namespace(ns)?;
    let r: BatchWriteReq = json_body(state, req).await?;
    let mut ops = Vec::with_capacity(r.ops.len());
    for (i, op) in r.ops.into_iter().enumerate() {
        ops.push(match op {
            BatchWriteOp::Put {
                key,
                value_b64,
                ttl,
                if_revision,
            } => BatchOp::Put {
                key,
                value: B64
                    .decode(value_b64.as_bytes())
                    .map_err(|e| {
                        ApiError::bad_request(format!("ops[{i}].value_b64 is not base64: {e}"))
                    })?
                    .into(),
                ttl_ms: ttl
                    .as_deref()
                    .map(ttl_value)
                    .transpose()
                    .map_err(|e| ApiError::bad_request(format!("ops[{i}]: {}", e.message)))?,
                if_revision,
            },
            BatchWriteOp::Delete { key, if_revision } => BatchOp::Delete { key, if_revision },
        });
    }
    let results = state.store.kv().batch_write(ns, ops).await?;
    let mut applied = true;
    let out: Vec<serde_json::Value> = results
        .into_iter()
        .map(|r| match r {
            BatchOpResult::Put(p) => serde_json::json!({"ok": true, "revision": p.revision, "created": p.created}),
            BatchOpResult::Deleted { existed } => serde_json::json!({"ok": true, "deleted": existed}),
            BatchOpResult::PreconditionFailed { op, reason } => {
                applied = false;
                serde_json::json!({"ok": false, "error": {"code": "precondition_failed", "message": format!("ops[{op}]: {reason}")}})
            }
            BatchOpResult::Aborted => {
                applied = false;
                serde_json::json!({"ok": false, "error": {"code": "aborted",
                    "message": "not applied: another operation on the same shard failed its precondition"}})
            }
        })
        .collect();
    Ok(response::json(
        200,
        &serde_json::json!({"applied": applied, "results": out}),
    ))
}
