//! What every request handler shares: the store, the bounds on bodies, connections and
//! waiting requests, tokens and rate limits.

use super::{access, conns, peer, status, window};
use crate::store::Store;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// What every request handler shares.
pub struct ServerState {
    pub store: Store,
    /// Budget of request body bytes buffered at once (`inflight_body_bytes_max`).
    pub body_budget: Arc<Semaphore>,
    /// Open connections: addresses, idleness ([`conns`]).
    pub conns: Arc<conns::Conns>,
    /// Open SSE and long-poll followers of event streams (`followers_max`, at most
    /// [`long_polls_max`]).
    pub followers: Arc<Semaphore>,
    /// The size of `followers`.
    pub followers_max: usize,
    /// Requests that wait or stream without end (followers, long-poll claims and ranges, cache
    /// waits): [`long_polls_max`] of them at once, so ordinary requests and health checks keep
    /// a quarter of `connections_max` whatever the waiters do.
    pub long_polls: Arc<Semaphore>,
    /// Tokens and rate limits ([`access`]).
    pub access: access::Access,
    /// When the server started (the status page's uptime).
    pub started: std::time::Instant,
    /// The last minute's rates and latencies, for the status page.
    pub window: window::Window,
    /// The last server errors and 429s, for the status page.
    pub recent_errors: status::RecentErrors,
    /// The access log, when `access_log` names one.
    pub access_log: Option<Arc<super::access_log::AccessLog>>,
    /// Permits for the first runs of `Idempotency-Key` requests, which run as tasks of their
    /// own (`connections_max` of them); shutdown waits until every permit is back.
    pub idempotent_tasks: Arc<Semaphore>,
}

/// How many requests may wait or stream at once (followers, long polls): three quarters of
/// `connections_max`. The rest is kept for requests that answer at once — a bound on waiters
/// equal to the connection bound would let them lock out every other client, health checks
/// included.
pub fn long_polls_max(connections_max: usize) -> usize {
    connections_max - (connections_max / 4).max(1).min(connections_max)
}

impl ServerState {
    /// A place for the request being served to wait or stream, watching its client; `None`
    /// when [`long_polls_max`] requests already do.
    pub fn waiting(&self) -> Option<peer::Waiting> {
        let place = self.long_polls.clone().try_acquire_owned().ok()?;
        access::ConnCtx::mark_waited();
        Some(peer::Waiting::new(place, access::ConnCtx::watch()))
    }

    /// A follower's places: one of `followers_max` and one of [`long_polls_max`]; 503 with
    /// `Retry-After` beyond either.
    pub fn follower(
        &self,
    ) -> Result<(peer::Waiting, tokio::sync::OwnedSemaphorePermit), crate::http::error::ApiError>
    {
        let refused = || {
            crate::http::error::ApiError::unavailable(
                "too_many_followers",
                "followers_max reached; retry",
            )
        };
        let permit = self
            .followers
            .clone()
            .try_acquire_owned()
            .map_err(|_| refused())?;
        Ok((self.waiting().ok_or_else(refused)?, permit))
    }

    /// The state of a server over `store`, its bounds taken from the store's config (no
    /// access log: [`ServerState::with_access_log`]).
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub fn new(store: Store) -> Arc<Self> {
        Self::with_access_log(store, None)
    }

    /// As [`ServerState::new`], writing `access_log`.
    pub fn with_access_log(
        store: Store,
        access_log: Option<Arc<super::access_log::AccessLog>>,
    ) -> Arc<Self> {
        let cfg = store.config().clone();
        let long_polls = long_polls_max(cfg.http.connections_max);
        let followers_max = cfg.http.followers_max.min(long_polls);
        let window = window::Window::new(
            store.engine(),
            std::time::Duration::from_millis(cfg.http.status_window_ms),
        );
        Arc::new(ServerState {
            body_budget: Arc::new(Semaphore::new(cfg.http.inflight_body_bytes_max)),
            store,
            conns: conns::Conns::new(cfg.http.connections_per_ip_max),
            followers: Arc::new(Semaphore::new(followers_max)),
            followers_max,
            long_polls: Arc::new(Semaphore::new(long_polls)),
            access: access::Access::new(&cfg),
            started: std::time::Instant::now(),
            recent_errors: status::RecentErrors::default(),
            window,
            idempotent_tasks: Arc::new(Semaphore::new(cfg.http.connections_max)),
            access_log,
        })
    }
}
