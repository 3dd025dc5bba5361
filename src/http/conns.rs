//! Open connections: how many, from which address, and which are idle — so idle keep-alive
//! connections cannot starve clients that want to talk.
//!
//! Every connection is registered with its peer IP. A connection is *idle* while no request is
//! being handled on it; it is closed once idle for `idle_timeout_ms`. When a new connection
//! arrives at `connections_max` (or at `connections_per_ip_max` for its address), the
//! longest-idle connection (of that address) is asked to close — an idle connection closes at
//! once, one that is mid-request answers it first (with `connection: close`) — and the new
//! connection takes its place. Only when nothing is idle is the new connection refused (503).
//! Connections keep no timer between requests: [`Conns::sweep_idle`], run a few times per
//! `idle_timeout_ms`, wakes the ones idle that long, and [`Conns::stop_all`] wakes every one at
//! shutdown.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Notify;

/// One open connection, as the registry and the connection's task see it.
pub struct Conn {
    pub id: u64,
    pub ip: IpAddr,
    /// Milliseconds since the registry started at which the last request began or ended.
    last_active_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// Wakes the connection's task between requests: it is asked to make room, the idle
    /// sweep found it idle, or the server stops.
    pub evict: Notify,
    evicting: std::sync::atomic::AtomicBool,
    epoch: Instant,
    /// Its socket, for requests that wait to watch their client ([`super::peer`]).
    pub socket: super::peer::SocketFd,
    /// The request being served took a place to wait (a long poll, a follow): its time is its
    /// wait, kept out of the status page's latencies.
    pub waited: std::sync::atomic::AtomicBool,
}

impl Conn {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The connection is closing (idle too long, or asked to make room): never pick it again.
    pub fn closing(&self) {
        self.evicting.store(true, Ordering::Release);
    }

    /// Whether it was asked to make room (it closes once its request in progress is answered).
    pub fn is_evicting(&self) -> bool {
        self.evicting.load(Ordering::Acquire)
    }

    /// How long it has been idle (0 while a request is being handled).
    pub fn idle_ms(&self) -> u64 {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return 0;
        }
        self.now_ms()
            .saturating_sub(self.last_active_ms.load(Ordering::Acquire))
    }
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    conns: HashMap<u64, Arc<Conn>>,
    per_ip: HashMap<IpAddr, usize>,
}

/// A request in progress on a connection: from its start until its response is sent (a
/// streamed body holds it until the stream ends), the connection is not idle.
pub struct Busy(Arc<Conn>);

impl Busy {
    pub fn new(conn: Arc<Conn>) -> Busy {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        conn.last_active_ms.store(conn.now_ms(), Ordering::Release);
        Busy(conn)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0
            .last_active_ms
            .store(self.0.now_ms(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The registry of open connections.
pub struct Conns {
    inner: Mutex<Inner>,
    epoch: Instant,
    per_ip_max: usize,
    /// The server stops: connections close once their request in progress is answered.
    stopping: std::sync::atomic::AtomicBool,
}

/// How long a connection must have been idle before a newcomer may take its place.
pub const EVICTABLE_IDLE_MS: u64 = 250;

/// Removes a connection from the registry when its task ends (normally or unwinding).
pub struct Registered {
    conns: Arc<Conns>,
    pub conn: Arc<Conn>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut g = self.conns.lock();
        g.conns.remove(&self.conn.id);
        if let Some(n) = g.per_ip.get_mut(&self.conn.ip) {
            *n -= 1;
            if *n == 0 {
                g.per_ip.remove(&self.conn.ip);
            }
        }
    }
}

impl Conns {
    pub fn new(per_ip_max: usize) -> Arc<Conns> {
        Arc::new(Conns {
            inner: Mutex::new(Inner::default()),
            epoch: Instant::now(),
            per_ip_max,
            stopping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The server stops: idle connections close now, busy ones after their response.
    pub fn stop_all(&self) {
        self.stopping.store(true, Ordering::Release);
        for c in self.lock().conns.values() {
            c.evict.notify_one();
        }
    }

    /// Whether the server stops.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Wakes every connection idle for `idle_timeout_ms` or longer, which then closes (unless
    /// a request's bytes wait on it). Run a few times per idle timeout: the connections keep no
    /// timer of their own between requests.
    pub fn sweep_idle(&self, idle_timeout_ms: u64) {
        for c in self.lock().conns.values() {
            if c.idle_ms() >= idle_timeout_ms {
                c.evict.notify_one();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.lock().conns.len()
    }

    /// Registers a connection from `ip`. If the address is at its share, its longest-idle
    /// connection is asked to close first (the flag says so); `None` when none of its
    /// connections is idle.
    pub fn register(self: &Arc<Self>, ip: IpAddr) -> Option<(Registered, bool)> {
        let mut g = self.lock();
        let at_share = g.per_ip.get(&ip).copied().unwrap_or(0) >= self.per_ip_max;
        if at_share && !self.evict_idle_locked(&g, Some(ip)) {
            return None;
        }
        g.next_id += 1;
        let conn = Arc::new(Conn {
            id: g.next_id,
            ip,
            last_active_ms: AtomicU64::new(self.epoch.elapsed().as_millis() as u64),
            in_flight: AtomicUsize::new(0),
            evict: Notify::new(),
            evicting: std::sync::atomic::AtomicBool::new(false),
            epoch: self.epoch,
            socket: super::peer::SocketFd::default(),
            waited: std::sync::atomic::AtomicBool::new(false),
        });
        g.conns.insert(conn.id, conn.clone());
        *g.per_ip.entry(ip).or_default() += 1;
        Some((
            Registered {
                conns: self.clone(),
                conn,
            },
            at_share,
        ))
    }

    /// Asks the longest-idle connection (of `ip`, or of anyone) to close. False when none is
    /// idle.
    pub fn evict_idle(&self, ip: Option<IpAddr>) -> bool {
        let g = self.lock();
        self.evict_idle_locked(&g, ip)
    }

    fn evict_idle_locked(&self, g: &Inner, ip: Option<IpAddr>) -> bool {
        let victim = g
            .conns
            .values()
            .filter(|c| ip.is_none_or(|ip| c.ip == ip) && !c.evicting.load(Ordering::Acquire))
            .map(|c| (c.idle_ms(), c))
            // A client between two requests is not idle: evicting it would only make it
            // reconnect and evict another (churn that halved goodput under a connection flood).
            .filter(|(idle, _)| *idle >= EVICTABLE_IDLE_MS)
            .max_by_key(|(idle, _)| *idle);
        match victim {
            Some((_, c)) => {
                c.evicting.store(true, Ordering::Release);
                c.evict.notify_one();
                crate::base::metrics::CONNECTIONS_EVICTED.inc();
                true
            }
            None => false,
        }
    }
}
