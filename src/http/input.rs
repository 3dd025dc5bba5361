//! Reading request input shared by every domain's handlers: query strings, durations, JSON
//! and NDJSON bodies (bounded by `json_body_bytes_max` and the in-flight body budget).

use super::body;
use super::body::ReqBody;
use super::ServerState;
use crate::base::util::parse_duration_ms;
use crate::http::error::ApiError;
use hyper::header::CONTENT_TYPE;
use hyper::Request;
use std::collections::HashMap;
use std::time::Duration;

/// A duration (`250ms`, `30s`, `5m`, …) in ms; a 400 naming `field` when it does not parse.
pub(crate) fn duration(field: &str, v: &str) -> Result<u64, ApiError> {
    parse_duration_ms(v).map_err(|e| ApiError::bad_request(format!("{field}: {e}")))
}

/// The query parameter `name` as a duration in ms, when present.
pub(crate) fn duration_param(
    q: &HashMap<String, String>,
    name: &str,
) -> Result<Option<u64>, ApiError> {
    q.get(name).map(|v| duration(name, v)).transpose()
}

/// The query parameter `name` as a boolean: `true` or `false`, `default` when absent; anything
/// else is a 400 (not quietly false).
pub(crate) fn bool_param(
    q: &HashMap<String, String>,
    name: &str,
    default: bool,
) -> Result<bool, ApiError> {
    match q.get(name).map(String::as_str) {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(ApiError::bad_request(format!(
            "{name} must be true or false, got `{other}`"
        ))),
    }
}

/// The `limit` query parameter: a whole number, 100 when absent (each caller bounds it).
pub(crate) fn limit_param(q: &HashMap<String, String>) -> Result<usize, ApiError> {
    match q.get("limit") {
        None => Ok(100),
        Some(l) => l
            .parse()
            .map_err(|_| ApiError::bad_request(format!("limit must be a whole number, got `{l}`"))),
    }
}

/// `limit` (1 to `max`, default `max`) and `after` of a listing of names.
pub(crate) fn name_page(
    q: &HashMap<String, String>,
    max: usize,
) -> Result<(usize, Option<String>), ApiError> {
    let limit = match q.get("limit") {
        None => max,
        Some(l) => l
            .parse()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!("limit must be a whole number 1-{max}, got `{l}`"))
            })?,
    };
    Ok((limit, q.get("after").cloned()))
}

pub(crate) fn query(req: &Request<ReqBody>) -> HashMap<String, String> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// Reads a JSON or NDJSON request's body whole, within `json_body_bytes_max`, the body budget
/// and `body_read_timeout_ms`.
pub(crate) async fn json_bytes(
    state: &ServerState,
    headers: &hyper::HeaderMap,
    body: ReqBody,
) -> Result<body::BodyBytes, ApiError> {
    let cfg = state.store.config();
    body::read(
        headers,
        body,
        cfg.http.json_body_bytes_max,
        &state.body_budget,
        Duration::from_millis(cfg.http.body_read_timeout_ms),
        "the request body",
    )
    .await
}

/// Reads a JSON body into `T` (bounded by `json_body_bytes_max`).
pub(crate) async fn json_body<T: serde::de::DeserializeOwned>(
    state: &ServerState,
    req: Request<ReqBody>,
) -> Result<T, ApiError> {
    let (parts, body) = req.into_parts();
    let body = json_bytes(state, &parts.headers, body).await?;
    crate::base::json_object::from_object(&body.bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Reads a body that is one JSON object, or NDJSON (`Content-Type: application/x-ndjson`, one
/// object per line, at most `items_max` — `what` names the bound in errors). Each object is
/// parsed into `T` and converted with `convert`; a bad line rejects the whole body with a 400
/// naming the line. Returns the items and whether the body was NDJSON.
pub(crate) async fn json_items<T, U>(
    state: &ServerState,
    req: Request<ReqBody>,
    items_max: usize,
    what: &str,
    convert: impl Fn(T) -> Result<U, ApiError>,
) -> Result<(Vec<U>, bool), ApiError>
where
    T: serde::de::DeserializeOwned,
{
    let ndjson = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson"));
    if !ndjson {
        return Ok((vec![convert(json_body(state, req).await?)?], false));
    }
    let (parts, b) = req.into_parts();
    let bytes = json_bytes(state, &parts.headers, b).await?;
    let mut items = Vec::new();
    for (n, line) in bytes.bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if items.len() == items_max {
            return Err(ApiError::bad_request(format!(
                "more than {items_max} items in one request ({what})"
            )));
        }
        let line_err = |m: String| ApiError::bad_request(format!("line {}: {m}", n + 1));
        let t: T =
            crate::base::json_object::from_object(line).map_err(|e| line_err(e.to_string()))?;
        items.push(convert(t).map_err(|e| line_err(e.message))?);
    }
    Ok((items, true))
}
