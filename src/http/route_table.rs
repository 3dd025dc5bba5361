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

/// A handler that answers without waiting.
pub type AnswerNow = fn(&Arc<ServerState>, Params, Request<ReqBody>) -> Result<Resp, ApiError>;

/// A handler that waits.
pub type AnswerLater = fn(Arc<ServerState>, Params, Request<ReqBody>) -> Reply;

/// A route's handler.
#[derive(Clone, Copy)]
pub enum Handler {
    /// Answers without waiting (a read, a health check): called in place, no future made.
    Now(AnswerNow),
    /// Waits (for a write's commit, a body, a long poll): a boxed future.
    Later(AnswerLater),
}

impl Handler {
    /// Runs the handler to its answer.
    pub async fn run(
        self,
        state: Arc<ServerState>,
        params: Params,
        req: Request<ReqBody>,
    ) -> Result<Resp, ApiError> {
        match self {
            Handler::Now(f) => f(&state, params, req),
            Handler::Later(f) => f(state, params, req).await,
        }
    }
}

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
    /// A PUT, POST or DELETE that writes no log record (a read by POST, the admin copies, a
    /// feed cursor): with `ack = "hub"` its reply does not wait for the hub.
    pub unlogged: bool,
}

/// Builds a [`RouteDef`] whose handler body is an expression over the named
/// `Arc<ServerState>`, `Params` and `Request<ReqBody>`.
/// `route!(idempotent "POST", …)` marks a route that takes an `Idempotency-Key`;
/// `route!(now "GET", …)` one whose body answers without `.await` ([`Handler::Now`]).
macro_rules! route {
    (now $method:literal, $path:literal, [$($q:literal),* $(,)?], |$s:ident, $p:ident, $r:ident| $body:expr) => {
        $crate::http::route_table::RouteDef {
            method: $method,
            path: $path,
            query: &[$($q),*],
            handler: $crate::http::route_table::Handler::Now(|$s, $p, $r| {
                let _ = (&$s, &$p, &$r);
                $body
            }),
            idempotent: false,
            unlogged: false,
        }
    };
    (unlogged $method:literal, $path:literal, [$($q:literal),* $(,)?], |$s:ident, $p:ident, $r:ident| $body:expr) => {
        $crate::http::route_table::RouteDef {
            unlogged: true,
            ..$crate::http::route_table::route!($method, $path, [$($q),*], |$s, $p, $r| $body)
        }
    };
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
            handler: $crate::http::route_table::Handler::Later(|$s, $p, $r| {
                Box::pin(async move {
                    let _ = (&$s, &$p, &$r);
                    $body
                })
            }),
            idempotent: false,
            unlogged: false,
        }
    };
}
pub(crate) use route;

/// The values a template captured, by name (`{key}` percent-decoded). They are ranges of the
/// request's path (a clone of its `Uri` shares its bytes): matching a route allocates nothing
/// unless the key had to be percent-decoded.
#[derive(Debug, Default, Clone)]
pub struct Params {
    path: Path,
    caps: [(&'static str, u32, u32); CAPTURES_MAX],
    n: usize,
    /// The `{key}` capture when percent-decoding changed it.
    decoded: Option<(&'static str, String)>,
}

/// Where the captures point: the request's path (a clone shares its bytes), or a copy.
#[derive(Debug, Default, Clone)]
enum Path {
    #[default]
    None,
    Uri(hyper::http::uri::PathAndQuery),
    Text(String),
}

impl Path {
    fn as_str(&self) -> &str {
        match self {
            Path::None => "",
            Path::Uri(u) => u.path(),
            Path::Text(t) => t,
        }
    }
}

/// Captures a template may hold (templates capture at most two segments besides a key).
const CAPTURES_MAX: usize = 4;

impl Params {
    /// The captured value of `{name}` ("" if the template has none).
    pub fn get(&self, name: &str) -> &str {
        if let Some((n, v)) = &self.decoded {
            if *n == name {
                return v;
            }
        }
        let path = self.path.as_str();
        self.caps[..self.n]
            .iter()
            .find(|(n, _, _)| *n == name)
            .and_then(|&(_, a, b)| path.get(a as usize..b as usize))
            .unwrap_or("")
    }

    /// Every capture, by name, in template order.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut out: Vec<_> = self.caps[..self.n]
            .iter()
            .map(|(n, _, _)| (*n, self.get(n).to_string()))
            .collect();
        if let Some((n, v)) = &self.decoded {
            out.push((n, v.clone()));
        }
        out
    }
}

impl PartialEq for Params {
    fn eq(&self, other: &Self) -> bool {
        self.pairs() == other.pairs()
    }
}

impl Eq for Params {}

#[derive(Debug, Clone, Copy)]
enum Seg {
    Lit(&'static str),
    Cap(&'static str),
    CapVerb(&'static str, &'static str),
    Rest(&'static str),
}

fn segment(s: &'static str, last: bool) -> Seg {
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

/// A path template split into its segments once, with the literal text every path it
/// matches starts with (up to its first capture): most templates are told apart by that
/// comparison alone.
#[derive(Debug)]
pub struct Template {
    segs: Vec<Seg>,
    prefix: &'static str,
}

impl Template {
    pub fn compile(template: &'static str) -> Template {
        let parts: Vec<&'static str> = template.trim_start_matches('/').split('/').collect();
        let last = parts.len().saturating_sub(1);
        Template {
            segs: parts
                .iter()
                .enumerate()
                .map(|(i, p)| segment(p, i == last))
                .collect(),
            prefix: template.split('{').next().unwrap_or(""),
        }
    }
}

/// How a path compares with a template.
#[derive(Debug, PartialEq, Eq)]
pub enum Match {
    Yes(Box<Params>),
    /// Matches but for the `:verb` of its last segment.
    OtherVerb(String),
    No,
}

/// What a template matched: captures as ranges of the path.
#[derive(Default)]
struct Found {
    caps: [(&'static str, u32, u32); CAPTURES_MAX],
    n: usize,
    decoded: Option<(&'static str, String)>,
}

impl Found {
    fn push(&mut self, name: &'static str, at: usize, len: usize) {
        if let Some(slot) = self.caps.get_mut(self.n) {
            *slot = (name, at as u32, (at + len) as u32);
            self.n += 1;
        }
    }

    fn into_params(self, path: Path) -> Params {
        Params {
            path,
            caps: self.caps,
            n: self.n,
            decoded: self.decoded,
        }
    }
}

/// How `path` (which starts at offset 0 of the request's path) compares with `t`.
enum Compared {
    Yes(Found),
    OtherVerb(String),
    No,
}

fn compare(t: &Template, path: &str) -> Result<Compared, ApiError> {
    let Some(mut rest) = path.strip_prefix('/') else {
        return Ok(Compared::No);
    };
    let mut at = 1;
    let mut found = Found::default();
    let segs = &t.segs;
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        if let Seg::Rest(name) = *seg {
            // Most keys have nothing to decode: the path's own text is the key.
            if memchr::memchr(b'%', rest.as_bytes()).is_none() {
                found.push(name, at, rest.len());
                return Ok(Compared::Yes(found));
            }
            match percent_encoding::percent_decode_str(rest).decode_utf8() {
                Ok(key) => found.decoded = Some((name, key.into_owned())),
                Err(_) => {
                    return Err(ApiError::bad_request(
                        "the key must be UTF-8 after percent-decoding",
                    ))
                }
            }
            return Ok(Compared::Yes(found));
        }
        let (part, tail) = match rest.split_once('/') {
            Some((p, t)) => (p, Some(t)),
            None => (rest, None),
        };
        if tail.is_none() != last {
            return Ok(Compared::No);
        }
        match *seg {
            Seg::Lit(l) if l == part => {}
            Seg::Lit(l) => {
                // `/v1/queues/q/dead:frob` against `dead:requeue`: the verb is what differs.
                return Ok(match (l.split_once(':'), part.split_once(':')) {
                    (Some((a, _)), Some((b, verb))) if last && a == b => {
                        Compared::OtherVerb(verb.to_string())
                    }
                    _ => Compared::No,
                });
            }
            Seg::Cap(name) if !part.is_empty() && !part.contains(':') => {
                found.push(name, at, part.len())
            }
            Seg::Cap(_) => return Ok(Compared::No),
            Seg::CapVerb(name, verb) => match part.split_once(':') {
                Some((cap, v)) if v == verb && !cap.is_empty() => found.push(name, at, cap.len()),
                Some((cap, v)) if last && !cap.is_empty() && !cap.contains(':') => {
                    return Ok(Compared::OtherVerb(v.to_string()))
                }
                _ => return Ok(Compared::No),
            },
            Seg::Rest(_) => unreachable!("handled above"),
        }
        match tail {
            Some(t) => {
                at += part.len() + 1;
                rest = t;
            }
            None => return Ok(Compared::Yes(found)),
        }
    }
    Ok(Compared::No)
}

/// Matches `path` (no query) against `template`. A key that is not UTF-8 after
/// percent-decoding is a 400.
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
pub fn match_template(template: &'static str, path: &str) -> Result<Match, ApiError> {
    Ok(match compare(&Template::compile(template), path)? {
        Compared::Yes(f) => Match::Yes(Box::new(f.into_params(Path::Text(path.to_string())))),
        Compared::OtherVerb(v) => Match::OtherVerb(v),
        Compared::No => Match::No,
    })
}

/// The routes of every table, their templates compiled once: what a request is matched
/// against.
pub struct Router {
    routes: Vec<(&'static RouteDef, Template)>,
}

/// A matched route.
pub struct Hit {
    pub route: &'static RouteDef,
    /// Its place among every table's routes (the key of its per-route metrics).
    pub index: usize,
    pub params: Params,
}

impl Router {
    pub fn new(tables: &[&'static [RouteDef]]) -> Router {
        Router {
            routes: tables
                .iter()
                .flat_map(|t| t.iter())
                .map(|r| (r, Template::compile(r.path)))
                .collect(),
        }
    }

    /// The route for a request's method and URI ([`Router::find_path`]).
    pub fn find(&self, method: &str, uri: &hyper::Uri) -> Result<Hit, ApiError> {
        let path = || match uri.path_and_query() {
            Some(pq) => Path::Uri(pq.clone()),
            None => Path::Text(uri.path().to_string()),
        };
        self.find_in(method, uri.path(), path)
    }

    /// The route for `method` and `path`: a 404 for an unknown path (naming the verbs a
    /// resource takes when only the verb is unknown), a 405 with `Allow` for a known path and
    /// another method. A path that matches nothing is tried once more without a trailing `/`
    /// (`/v1/queues/`).
    pub fn find_path(&self, method: &str, path: &str) -> Result<Hit, ApiError> {
        self.find_in(method, path, || Path::Text(path.to_string()))
    }

    fn find_in(
        &self,
        method: &str,
        path: &str,
        src: impl FnOnce() -> Path,
    ) -> Result<Hit, ApiError> {
        let trimmed = path.strip_suffix('/').filter(|p| !p.is_empty());
        // The request's own method first: a hit decodes its key once and looks at nothing else.
        for attempt in std::iter::once(path).chain(trimmed) {
            for (index, (route, t)) in self.routes.iter().enumerate() {
                if route.method == method && attempt.starts_with(t.prefix) {
                    if let Compared::Yes(found) = compare(t, attempt)? {
                        return Ok(Hit {
                            route,
                            index,
                            params: found.into_params(src()),
                        });
                    }
                }
            }
        }
        Err(self.miss(path, trimmed))
    }

    /// Why nothing matched: what the path does answer to, for the 405 or 404.
    fn miss(&self, path: &str, trimmed: Option<&str>) -> ApiError {
        let mut allow: Vec<&'static str> = Vec::new();
        let mut verbs: Vec<&'static str> = Vec::new();
        let mut other_verb = None;
        for attempt in std::iter::once(path).chain(trimmed) {
            for (route, t) in &self.routes {
                match compare(t, attempt) {
                    Err(e) => return e,
                    Ok(Compared::Yes(_)) => {
                        if !allow.contains(&route.method) {
                            allow.push(route.method);
                        }
                    }
                    Ok(Compared::OtherVerb(v)) => {
                        other_verb = Some(v);
                        if let Some((_, verb)) = route.path.rsplit_once(':') {
                            if !verbs.contains(&verb) {
                                verbs.push(verb);
                            }
                        }
                    }
                    Ok(Compared::No) => {}
                }
            }
            if !allow.is_empty() || other_verb.is_some() {
                break;
            }
        }
        if !allow.is_empty() {
            let allow = allow.join(", ");
            return ApiError {
                allow: Some(allow.clone()),
                ..ApiError::new(
                    405,
                    "method_not_allowed",
                    format!("allowed methods: {allow}"),
                )
            };
        }
        if let Some(v) = other_verb {
            let known: Vec<String> = verbs.iter().map(|v| format!(":{v}")).collect();
            return ApiError::not_found(format!(
                "unknown operation `:{v}`; use {}",
                known.join(", ")
            ));
        }
        ApiError::not_found(format!("no such endpoint: {path}"))
    }
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
            Match::Yes(p) => Some(p.pairs()),
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
        let router = Router::new(super::super::dispatch::TABLES);
        for _ in 0..20_000 {
            let len = rng.random_range(0..40);
            let mut p = String::from(if rng.random_bool(0.7) { "/v1/kv/" } else { "/" });
            for _ in 0..len {
                p.push(alphabet[rng.random_range(0..alphabet.len())]);
            }
            if let Ok(hit) = router.find_path("GET", &p) {
                let _ = crate::kv::validate_namespace(hit.params.get("ns"));
                let _ = crate::kv::validate_key(hit.params.get("key"));
            }
        }
    }
}
