//! Route tables: each `http/<domain>.rs` exports one `ROUTES` table of [`RouteDef`]s (method,
//! path template, the query parameters it takes, handler). Dispatch, the 405 `Allow` list, the
//! check of query parameters and the OpenAPI test are all derived from those tables, so a route
//! exists in exactly one place.
//!
//! Templates are `/`-separated segments:
//! - a literal (`v1`, `kv`, `dead:requeue`),
//! - `{name}`: one non-empty segment without `:` (so `/v1/kv/app:incr` is never a namespace),
//! - `{name}:verb`: one segment that ends in `:verb`, the capture is the text before it,
//! - `{key}` as the last segment: the rest of the path, `/`s included, percent-decoded.

use super::body::ReqBody;
use super::response::Resp;
use super::ServerState;
use crate::http::error::ApiError;
use hyper::Request;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// What a handler returns.
pub type Reply = Pin<Box<dyn Future<Output = Result<Resp, ApiError>> + Send>>;

/// A route's handler.
pub type Handler = fn(Arc<ServerState>, Params, Request<ReqBody>) -> Reply;

/// One route: a method on a path template.
pub struct RouteDef {
    pub method: &'static str,
    pub path: &'static str,
    /// The query parameters it reads; any other is a 400 naming it.
    pub query: &'static [&'static str],
    pub handler: Handler,
    /// Takes an `Idempotency-Key` (a POST that creates something): its first response is kept
    /// and replayed to retries ([`super::retries`]).
    pub idempotent: bool,
}

/// Builds a [`RouteDef`] whose handler body is an expression over the named
/// `Arc<ServerState>`, `Params` and `Request<ReqBody>`.
/// `route!(idempotent "POST", …)` marks a route that takes an `Idempotency-Key`.
macro_rules! route {
    (idempotent $method:literal, $path:literal, [$($q:literal),* $(,)?], |$s:ident, $p:ident, $r:ident| $body:expr) => {
        $crate::http::route_table::RouteDef {
            idempotent: true,
            ..$crate::http::route_table::route!($method, $path, [$($q),*], |$s, $p, $r| $body)
        }
    };
    ($method:literal, $path:literal, [$($q:literal),* $(,)?], |$s:ident, $p:ident, $r:ident| $body:expr) => {
        $crate::http::route_table::RouteDef {
            method: $method,
            path: $path,
            query: &[$($q),*],
            handler: |$s, $p, $r| {
                Box::pin(async move {
                    let _ = (&$s, &$p, &$r);
                    $body
                })
            },
            idempotent: false,
        }
    };
}
pub(crate) use route;

/// The values a template captured, by name (`{key}` percent-decoded).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Params(Vec<(&'static str, String)>);

impl Params {
    /// The captured value of `{name}` ("" if the template has none).
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

enum Seg<'t> {
    Lit(&'t str),
    Cap(&'t str),
    CapVerb(&'t str, &'t str),
    Rest(&'t str),
}

fn segment(s: &'static str, last: bool) -> Seg<'static> {
    match s.strip_prefix('{').and_then(|s| s.split_once('}')) {
        Some(("key", "")) if last => Seg::Rest("key"),
        Some((name, "")) => Seg::Cap(name),
        Some((name, verb)) => match verb.strip_prefix(':') {
            Some(verb) => Seg::CapVerb(name, verb),
            None => Seg::Lit(s),
        },
        None => Seg::Lit(s),
    }
}

/// Captures of a template still being matched, borrowed from the path (templates capture at
/// most two segments besides a key).
#[derive(Default)]
struct Found<'p> {
    items: [(&'static str, &'p str); 4],
    n: usize,
}

impl<'p> Found<'p> {
    fn push(&mut self, name: &'static str, value: &'p str) {
        if let Some(slot) = self.items.get_mut(self.n) {
            *slot = (name, value);
            self.n += 1;
        }
    }

    fn owned(&self) -> Params {
        Params(
            self.items[..self.n]
                .iter()
                .map(|(name, v)| (*name, v.to_string()))
                .collect(),
        )
    }
}

/// How a path compares with a template.
#[derive(Debug, PartialEq, Eq)]
pub enum Match {
    Yes(Params),
    /// Matches but for the `:verb` of its last segment.
    OtherVerb(String),
    No,
}

/// Matches `path` (no query) against `template`. A key that is not UTF-8 after
/// percent-decoding is a 400.
pub fn match_template(template: &'static str, path: &str) -> Result<Match, ApiError> {
    let Some(mut rest) = path.strip_prefix('/') else {
        return Ok(Match::No);
    };
    // Captures borrow the path until the whole template has matched: a miss allocates nothing.
    let mut found = Found::default();
    let mut segs = template.trim_start_matches('/').split('/').peekable();
    while let Some(text) = segs.next() {
        let last = segs.peek().is_none();
        let seg = segment(text, last);
        if let Seg::Rest(name) = seg {
            let key = percent_encoding::percent_decode_str(rest)
                .decode_utf8()
                .map_err(|_| ApiError::bad_request("the key must be UTF-8 after percent-decoding"))?
                .into_owned();
            let mut params = found.owned();
            params.0.push((name, key));
            return Ok(Match::Yes(params));
        }
        let (part, tail) = match rest.split_once('/') {
            Some((p, t)) => (p, Some(t)),
            None => (rest, None),
        };
        if tail.is_none() != last {
            return Ok(Match::No);
        }
        match seg {
            Seg::Lit(l) if l == part => {}
            Seg::Lit(l) => {
                // `/v1/queues/q/dead:frob` against `dead:requeue`: the verb is what differs.
                return Ok(match (l.split_once(':'), part.split_once(':')) {
                    (Some((a, _)), Some((b, verb))) if last && a == b => {
                        Match::OtherVerb(verb.to_string())
                    }
                    _ => Match::No,
                });
            }
            Seg::Cap(name) if !part.is_empty() && !part.contains(':') => found.push(name, part),
            Seg::Cap(_) => return Ok(Match::No),
            Seg::CapVerb(name, verb) => match part.split_once(':') {
                Some((cap, v)) if v == verb && !cap.is_empty() => found.push(name, cap),
                Some((cap, v)) if last && !cap.is_empty() && !cap.contains(':') => {
                    return Ok(Match::OtherVerb(v.to_string()))
                }
                _ => return Ok(Match::No),
            },
            Seg::Rest(_) => unreachable!("handled above"),
        }
        match tail {
            Some(t) => rest = t,
            None => return Ok(Match::Yes(found.owned())),
        }
    }
    Ok(Match::No)
}

/// The route for `method` and `path`: a 404 for an unknown path (naming the verbs a resource
/// takes when only the verb is unknown), a 405 with `Allow` for a known path and another method.
/// A path that matches nothing is tried once more without a trailing `/` (`/v1/queues/`).
pub fn find<'r>(
    tables: &[&'r [RouteDef]],
    method: &str,
    path: &str,
) -> Result<(&'r RouteDef, Params), ApiError> {
    let trimmed = path.strip_suffix('/').filter(|p| !p.is_empty());
    // The request's own method first: a hit decodes its key once and looks at nothing else.
    for attempt in std::iter::once(path).chain(trimmed) {
        for route in tables.iter().flat_map(|t| t.iter()) {
            if route.method == method {
                if let Match::Yes(params) = match_template(route.path, attempt)? {
                    return Ok((route, params));
                }
            }
        }
    }
    // A miss: what the path does answer to, for the 405 or 404.
    let mut allow: Vec<&'static str> = Vec::new();
    let mut verbs: Vec<&'static str> = Vec::new();
    let mut other_verb = None;
    for attempt in std::iter::once(path).chain(trimmed) {
        for route in tables.iter().flat_map(|t| t.iter()) {
            match match_template(route.path, attempt)? {
                Match::Yes(_) => {
                    if !allow.contains(&route.method) {
                        allow.push(route.method);
                    }
                }
                Match::OtherVerb(v) => {
                    other_verb = Some(v);
                    if let Some((_, verb)) = route.path.rsplit_once(':') {
                        if !verbs.contains(&verb) {
                            verbs.push(verb);
                        }
                    }
                }
                Match::No => {}
            }
        }
        if !allow.is_empty() || other_verb.is_some() {
            break;
        }
    }
    if !allow.is_empty() {
        let allow = allow.join(", ");
        return Err(ApiError {
            allow: Some(allow.clone()),
            ..ApiError::new(
                405,
                "method_not_allowed",
                format!("allowed methods: {allow}"),
            )
        });
    }
    if let Some(v) = other_verb {
        let known: Vec<String> = verbs.iter().map(|v| format!(":{v}")).collect();
        return Err(ApiError::not_found(format!(
            "unknown operation `:{v}`; use {}",
            known.join(", ")
        )));
    }
    Err(ApiError::not_found(format!("no such endpoint: {path}")))
}

/// Refuses query parameters the route does not take (a misspelled `?tll=30s` would otherwise be
/// ignored silently) and any given twice (one of the values would be ignored).
pub fn check_query(route: &RouteDef, query: Option<&str>) -> Result<(), ApiError> {
    let Some(q) = query else { return Ok(()) };
    let mut seen = 0u64;
    for (name, _) in form_urlencoded::parse(q.as_bytes()) {
        if let Some(i) = route.query.iter().position(|known| *known == name.as_ref()) {
            if seen & (1 << i) != 0 {
                return Err(ApiError::bad_request(format!(
                    "query parameter `{name}` given twice; give it once"
                )));
            }
            seen |= 1 << i;
        } else {
            let takes = if route.query.is_empty() {
                "this endpoint takes no query parameters".to_string()
            } else {
                format!("this endpoint takes: {}", route.query.join(", "))
            };
            return Err(ApiError::bad_request(format!(
                "unknown query parameter `{name}` for {} {}; {takes}",
                route.method, route.path
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(template: &'static str, path: &str) -> Option<Vec<(&'static str, String)>> {
        match match_template(template, path).unwrap() {
            Match::Yes(p) => Some(p.0),
            _ => None,
        }
    }

    #[test]
    fn templates() {
        assert_eq!(
            caps("/v1/kv/{ns}/{key}", "/v1/kv/app/a%2Fb/c"),
            Some(vec![("ns", "app".into()), ("key", "a/b/c".into())])
        );
        assert_eq!(caps("/v1/kv/{ns}/{key}", "/v1/kv/app"), None);
        assert_eq!(caps("/v1/kv/{ns}/{key}", "/v1/kv/a:b/c"), None);
        assert_eq!(
            caps("/v1/kv/{ns}", "/v1/kv/app"),
            Some(vec![("ns", "app".into())])
        );
        assert_eq!(caps("/v1/kv/{ns}", "/v1/kv/app:incr"), None);
        assert_eq!(
            caps("/v1/kv/{ns}:incr", "/v1/kv/app:incr"),
            Some(vec![("ns", "app".into())])
        );
        assert_eq!(
            match_template("/v1/kv/{ns}:incr", "/v1/kv/app:frob").unwrap(),
            Match::OtherVerb("frob".into())
        );
        assert_eq!(caps("/v1/cache:stats", "/v1/cache:stats"), Some(vec![]));
        assert_eq!(caps("/v1/cache:stats", "/v1/cache:stats/x"), None);
        assert_eq!(
            caps("/v1/queues/{q}/jobs/{id}/ack", "/v1/queues/e/jobs/7/ack"),
            Some(vec![("q", "e".into()), ("id", "7".into())])
        );
        assert_eq!(
            match_template("/v1/queues/{q}/dead:requeue", "/v1/queues/e/dead:x").unwrap(),
            Match::OtherVerb("x".into())
        );
        assert_eq!(
            match_template("/v1/kv/{ns}/{key}", "/v1/kv/app/%FF")
                .unwrap_err()
                .status,
            400
        );
    }

    /// Random paths never panic the matcher (the fuzz target's property, on every test run).
    #[test]
    fn random_paths_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet: Vec<char> = "/v1kvqueschd:%aF0-_.~ \u{e9}".chars().collect();
        let tables = super::super::dispatch::TABLES;
        for _ in 0..20_000 {
            let len = rng.random_range(0..40);
            let mut p = String::from(if rng.random_bool(0.7) { "/v1/kv/" } else { "/" });
            for _ in 0..len {
                p.push(alphabet[rng.random_range(0..alphabet.len())]);
            }
            if let Ok((_, params)) = find(tables, "GET", &p) {
                let _ = crate::kv::validate_namespace(params.get("ns"));
                let _ = crate::kv::validate_key(params.get("key"));
            }
        }
    }
}
