//! What runs before every handler, for every domain's routes alike: the request id, the
//! token check (401/403), and the rate limit (429). A route's scope and the name it touches
//! are derived here from its table entry, so a new route is covered without a line here.

use super::route_table::{Params, RouteDef};
use crate::base::tokens::{Denied, Kind, Scope, Tokens};
use crate::http::error::ApiError;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

tokio::task_local! {
    /// The connection a request came in on, for the task that serves the connection (its
    /// requests' futures run inside it): set once per connection instead of an extension per
    /// request (an extension map and its boxes are allocations every request would pay).
    static CONNECTION: ConnCtx;
}

/// What a request may need of its connection.
#[derive(Clone)]
pub struct ConnCtx {
    pub conn: std::sync::Arc<super::conns::Conn>,
    /// On the admin socket: the file's permissions were the check.
    pub local: bool,
}

impl ConnCtx {
    /// Runs `f` (a connection's future) with `self` as its requests' connection.
    pub async fn scope<F: std::future::Future>(self, f: F) -> F::Output {
        CONNECTION.scope(self, f).await
    }

    /// Whether the request being served came in on the admin socket.
    fn is_local() -> bool {
        CONNECTION.try_with(|c| c.local).unwrap_or(false)
    }

    /// The address of the request being served (none outside a connection's task).
    pub fn ip() -> Option<IpAddr> {
        CONNECTION.try_with(|c| c.conn.ip).ok()
    }

    /// Marks the request being served as one that waits (see [`super::conns::Conn::waited`]).
    pub fn mark_waited() {
        let _ = CONNECTION.try_with(|c| {
            c.conn
                .waited
                .store(true, std::sync::atomic::Ordering::Relaxed)
        });
    }

    /// Whether the request being served waited, and clears the mark for the next one.
    pub fn take_waited() -> bool {
        CONNECTION
            .try_with(|c| {
                c.conn
                    .waited
                    .swap(false, std::sync::atomic::Ordering::Relaxed)
            })
            .unwrap_or(false)
    }

    /// A watch on the client of the request being served ([`super::peer`]).
    pub fn watch() -> Option<super::peer::Watch> {
        CONNECTION
            .try_with(|c| super::peer::Watch::of(&c.conn.socket))
            .ok()
            .flatten()
    }
}

/// The caller name of requests on the admin socket.
pub const ADMIN_SOCKET_CALLER: &str = "#admin-socket";

/// Who sent a request, put in its extensions once admitted: the token's name, or `None` when
/// no tokens are configured.
#[derive(Debug, Clone)]
pub struct Caller(pub Option<std::sync::Arc<str>>);

/// What a request touches, for the prefix limits of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// One named namespace, stream or queue.
    Named(Kind, &'a str),
    /// Every name of a kind (a list, cache-wide stats, schedules).
    AllOf(Kind),
    /// The whole server (metrics, the status page, admin).
    Everything,
}

/// The scope a route needs; `None` for the probes, which are open to all.
pub fn scope_of(route: &RouteDef) -> Option<Scope> {
    match (route.method, route.path) {
        // The probes, and the status page's HTML (its data comes from /v1/status).
        (_, "/healthz" | "/readyz" | "/") => None,
        (_, p) if p.starts_with("/v1/admin") => Some(Scope::Admin),
        (_, p) if p.starts_with("/v1/changes") => Some(Scope::Feed),
        // Mass deletes: a whole namespace, a queue's jobs.
        ("DELETE", "/v1/kv/{ns}" | "/v1/queues/{q}/jobs") => Some(Scope::Admin),
        ("GET" | "HEAD", _) => Some(Scope::Read),
        (_, p) if p.ends_with(":batchGet") => Some(Scope::Read),
        _ => Some(Scope::Write),
    }
}

/// The name a route touches, from its captures.
pub fn target_of<'p>(route: &RouteDef, params: &'p Params) -> Target<'p> {
    let p = route.path;
    if p.starts_with("/v1/schedules") {
        // A schedule's body names the queue it feeds.
        Target::AllOf(Kind::Queue)
    } else if p.contains("{ns}") {
        Target::Named(Kind::Namespace, params.get("ns"))
    } else if p.contains("{stream}") {
        Target::Named(Kind::Stream, params.get("stream"))
    } else if p.contains("{q}") {
        Target::Named(Kind::Queue, params.get("q"))
    } else if p.starts_with("/v1/cache") {
        Target::AllOf(Kind::Namespace)
    } else if p.starts_with("/v1/streams") {
        Target::AllOf(Kind::Stream)
    } else if p.starts_with("/v1/queues") {
        Target::AllOf(Kind::Queue)
    } else {
        Target::Everything
    }
}

type Limiter = RateLimiter<
    ClientKey,
    DefaultKeyedStateStore<ClientKey>,
    DefaultClock,
    StateInformationMiddleware,
>;

/// Whose bucket a request draws from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ClientKey {
    Token(std::sync::Arc<str>),
    /// An IPv4 address, or an IPv6 /64 (one host usually holds a whole /64).
    Ip(IpAddr),
    /// Past `rate_limit_clients_max` buckets, an address shares the bucket of its network (an
    /// IPv4 /24, an IPv6 /48) until idle clients are forgotten: one client cannot push every
    /// newcomer into one shared bucket by cycling addresses.
    Prefix(IpAddr),
    /// Past twice `rate_limit_clients_max` buckets, everyone else, until idle clients are
    /// forgotten (the memory bound).
    Overflow,
}

/// The network an address shares a bucket with past `rate_limit_clients_max`.
fn prefix_key(ip: IpAddr) -> IpAddr {
    match ip_key(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            IpAddr::V4(std::net::Ipv4Addr::new(o[0], o[1], o[2], 0))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
        }
    }
}

fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

struct Limit {
    limiter: Limiter,
    burst: u32,
    per_cell: Duration,
}

impl Limit {
    fn new(per_s: u64, burst: u64) -> Option<Self> {
        let rate = NonZeroU32::new(u32::try_from(per_s).ok()?)?;
        let burst = NonZeroU32::new(u32::try_from(burst).unwrap_or(u32::MAX)).unwrap_or(rate);
        let quota = Quota::per_second(rate).allow_burst(burst);
        Some(Limit {
            limiter: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            burst: burst.get(),
            per_cell: quota.replenish_interval(),
        })
    }
}

/// The admission state of a server: tokens and rate limiters.
pub struct Access {
    tokens: Tokens,
    reads: Option<Limit>,
    writes: Option<Limit>,
    clients_max: usize,
}

static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

impl Access {
    pub fn new(cfg: &crate::base::config::Config) -> Self {
        Access {
            tokens: Tokens::new(&cfg.http.tokens),
            reads: Limit::new(cfg.http.rate_limit_reads_per_s, cfg.http.rate_limit_burst),
            writes: Limit::new(cfg.http.rate_limit_writes_per_s, cfg.http.rate_limit_burst),
            clients_max: cfg.http.rate_limit_clients_max,
        }
    }

    /// Forgets clients whose buckets are full again, so limiter memory follows the clients
    /// active in the last few seconds. Run every few seconds.
    pub fn prune(&self) {
        for l in [&self.reads, &self.writes].into_iter().flatten() {
            l.limiter.retain_recent();
            l.limiter.shrink_to_fit();
        }
    }

    /// Clients with limiter state now (reads and writes counted apart).
    pub fn clients(&self) -> usize {
        [&self.reads, &self.writes]
            .into_iter()
            .flatten()
            .map(|l| l.limiter.len())
            .sum()
    }

    /// Lets a request through or says why not. Headers for the response (the rate-limit
    /// state, `WWW-Authenticate`) go into `headers` either way.
    pub fn admit(
        &self,
        route: &RouteDef,
        params: &Params,
        req: &mut hyper::Request<super::body::ReqBody>,
        headers: &mut HeaderMap,
    ) -> Result<(), ApiError> {
        let Some(need) = scope_of(route) else {
            return Ok(());
        };
        if ConnCtx::is_local() {
            // `#` is never in a token name: the socket's caller cannot be mistaken for a token
            // (idempotency keys and limits are per caller).
            req.extensions_mut()
                .insert(Caller(Some(ADMIN_SOCKET_CALLER.into())));
            return Ok(());
        }
        let caller = if self.tokens.is_open() {
            None
        } else {
            let principal = self
                .tokens
                .authenticate(req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes))
                .map_err(|d| denied(d, headers))?;
            let target = target_of(route, params);
            let allowed = match target {
                Target::Named(kind, name) => principal.allows(need, Some((kind, name))),
                Target::AllOf(kind) => principal.allows(need, None).or_else(|d| match d {
                    Denied::Limited if principal.unlimited_in(kind) => Ok(()),
                    d => Err(d),
                }),
                Target::Everything => principal.allows(need, None),
            };
            allowed.map_err(|d| denied(d, headers))?;
            Some(principal.name.clone())
        };
        let limit = if need == Scope::Read {
            &self.reads
        } else {
            &self.writes
        };
        if let Some(limit) = limit {
            let key = match &caller {
                Some(name) => ClientKey::Token(name.clone()),
                None => match ConnCtx::ip() {
                    Some(ip) => {
                        let held = limit.limiter.len();
                        if held < self.clients_max {
                            ClientKey::Ip(ip_key(ip))
                        } else if held < self.clients_max.saturating_mul(2) {
                            ClientKey::Prefix(prefix_key(ip))
                        } else {
                            ClientKey::Overflow
                        }
                    }
                    None => ClientKey::Overflow,
                },
            };
            let (remaining, reset) = match limit.limiter.check_key(&key) {
                Ok(snapshot) => {
                    let remaining = snapshot.remaining_burst_capacity();
                    let empty = limit.burst.saturating_sub(remaining);
                    (remaining, limit.per_cell * empty)
                }
                Err(not_until) => {
                    let wait = not_until.wait_time_from(limit.limiter.clock().now());
                    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                    rate_headers(headers, limit.burst, 0, secs);
                    crate::base::metrics::RATE_LIMITED.inc();
                    let mut e = ApiError::new(
                        429,
                        "rate_limited",
                        format!(
                            "over the {} limit of {}; retry after {secs} s",
                            if need == Scope::Read { "read" } else { "write" },
                            describe(limit),
                        ),
                    );
                    e.retry_after_s = Some(secs.max(1));
                    return Err(e);
                }
            };
            let secs = reset.as_secs() + u64::from(reset.subsec_nanos() > 0);
            rate_headers(headers, limit.burst, remaining, secs);
        }
        // Only a named caller is put in the extensions (none is the common case, and costs no
        // allocation).
        if caller.is_some() {
            req.extensions_mut().insert(Caller(caller));
        }
        Ok(())
    }
}

fn describe(limit: &Limit) -> String {
    let per_s = Duration::from_secs(1).as_nanos() / limit.per_cell.as_nanos().max(1);
    format!("{per_s}/s (burst {})", limit.burst)
}

fn rate_headers(h: &mut HeaderMap, limit: u32, remaining: u32, reset_s: u64) {
    h.insert(RATELIMIT_LIMIT.clone(), HeaderValue::from(limit));
    h.insert(RATELIMIT_REMAINING.clone(), HeaderValue::from(remaining));
    h.insert(RATELIMIT_RESET.clone(), HeaderValue::from(reset_s));
}

fn denied(d: Denied, headers: &mut HeaderMap) -> ApiError {
    let unknown = d == Denied::Unknown;
    let (status, code, message) = match d {
        Denied::Missing => (
            401,
            "unauthorized",
            "this server needs a token: send `Authorization: Bearer <token>`".to_string(),
        ),
        Denied::Unknown => (
            401,
            "unauthorized",
            "the bearer token matches no configured token".to_string(),
        ),
        Denied::Scope(s) => (
            403,
            "forbidden",
            format!(
                "the token lacks the `{}` scope this request needs",
                s.as_str()
            ),
        ),
        Denied::Name(kind, name) => (
            403,
            "forbidden",
            format!(
                "the token may not touch {} `{}`: it is limited to other name prefixes",
                kind.as_str(),
                name.escape_debug()
            ),
        ),
        Denied::Limited => (
            403,
            "forbidden",
            "this request spans every name, and the token is limited to name prefixes".to_string(),
        ),
    };
    if status == 401 {
        crate::base::metrics::UNAUTHORIZED.inc();
        let value = if unknown {
            "Bearer realm=\"shardbox\", error=\"invalid_token\""
        } else {
            "Bearer realm=\"shardbox\""
        };
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(value));
    } else {
        crate::base::metrics::FORBIDDEN.inc();
    }
    ApiError::new(status, code, message)
}

/// A request's id: the client's `X-Request-Id` when it sent a usable one, else ours (128 bits
/// in hex, kept inline: making one allocates nothing).
#[derive(Clone)]
pub enum RequestId {
    Ours([u8; 32]),
    Theirs(HeaderValue),
}

impl RequestId {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Ours(b) => b,
            RequestId::Theirs(v) => v.as_bytes(),
        }
    }
}

/// The id of a request with `headers`: the client's `X-Request-Id` when it is 1–128 visible
/// ASCII characters, else a new one (a random 64-bit prefix per thread and a count: unique
/// without drawing random bits for every request).
pub fn request_id(headers: &HeaderMap) -> RequestId {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return RequestId::Theirs(v.clone());
        }
    }
    thread_local! {
        static NEXT: std::cell::Cell<(u64, u64)> = std::cell::Cell::new((rand::random(), 0));
    }
    let (prefix, n) = NEXT.with(|c| {
        let (p, n) = c.get();
        c.set((p, n.wrapping_add(1)));
        (p, n)
    });
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let id = (u128::from(prefix) << 64) | u128::from(n);
    let mut buf = [0u8; 32];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((id >> (124 - 4 * i)) & 0xf) as usize];
    }
    RequestId::Ours(buf)
}

/// The request id header, in requests and responses.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_a_scope_and_a_target() {
        let mut admin = Vec::new();
        for t in super::super::dispatch::TABLES {
            for r in t.iter() {
                let scope = scope_of(r);
                if r.path == "/healthz" || r.path == "/readyz" || r.path == "/" {
                    assert_eq!(scope, None);
                    continue;
                }
                let scope = scope.expect("every other route needs a scope");
                // Every route of the change feed needs `feed` (a feed reads every domain).
                if r.path.starts_with("/v1/changes") {
                    assert_eq!(scope, Scope::Feed, "{} {}", r.method, r.path);
                    continue;
                }
                // Reads need `read`, except the admin ones (an export reads everything).
                if matches!(r.method, "GET" | "HEAD") {
                    let want = if r.path.starts_with("/v1/admin/") {
                        Scope::Admin
                    } else {
                        Scope::Read
                    };
                    assert_eq!(scope, want, "{} {}", r.method, r.path);
                }
                if scope == Scope::Admin {
                    admin.push(r.path);
                }
                let p = Params::default();
                let t = target_of(r, &p);
                if r.path.contains("{ns}") {
                    assert_eq!(t, Target::Named(Kind::Namespace, ""));
                }
            }
        }
        assert!(admin.contains(&"/v1/kv/{ns}"), "{admin:?}");
        assert!(admin.contains(&"/v1/admin/export"), "{admin:?}");
    }

    #[test]
    fn ipv6_clients_share_a_slash_64() {
        let a: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        let m: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(ip_key(m), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn request_ids_are_kept_or_made() {
        let mut h = HeaderMap::new();
        assert_eq!(request_id(&h).as_bytes().len(), 32);
        // Two made ids differ.
        assert_ne!(request_id(&h).as_bytes(), request_id(&h).as_bytes());
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h).as_bytes(), b"abc-123");
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h).as_bytes(), b"has space");
    }
}
