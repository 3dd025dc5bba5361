//! The HTTP/1.1 server: accept loop, connection limits, timeouts, graceful shutdown.
//!
//! `run(listener, store, shutdown)` takes a bound listener, so tests bind `127.0.0.1:0`.

mod access;
pub mod error;
internal!(body, response);
mod admin;
mod cache;
mod conns;
mod dispatch;
mod events;
mod health;
mod hyper_errors;
mod input;
mod kv;
mod metrics;
mod peer;
mod queue;
mod retries;
mod route_table;
mod status;
pub mod tls;

pub use dispatch::{find_route, idempotent_routes, routes};
pub use route_table::{check_query, match_template, Match, Params, RouteDef};

use crate::store::Store;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

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
    /// The last server errors and 429s, for the status page.
    pub recent_errors: status::RecentErrors,
    /// Permits for the first runs of `Idempotency-Key` requests, which run as tasks of their
    /// own (`connections_max` of them); shutdown waits until every permit is back.
    pub idempotent_tasks: Arc<Semaphore>,
}

const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 92\r\n\r\n{\"error\":{\"code\":\"too_many_connections\",\"message\":\"connections_max reached; retry shortly\"}}";

/// Refused connections answered at once; beyond this they are closed without an answer.
const REFUSALS_MAX: usize = 64;

/// Refuses a connection: counted, answered 503 (after reading its first bytes, so an HTTP
/// client sees a response to its request) while fewer than `REFUSALS_MAX` refusals are being
/// answered, else closed at once.
fn refuse(stream: tokio::net::TcpStream, refusals: &Arc<Semaphore>, plain: bool) {
    crate::base::metrics::CONNECTIONS_REFUSED.inc();
    // A TLS client cannot read a plain-text answer: it is closed at once.
    if !plain {
        return;
    }
    if let Ok(permit) = refusals.clone().try_acquire_owned() {
        tokio::spawn(answer_refused(stream, permit));
    }
}

async fn answer_refused(
    mut stream: tokio::net::TcpStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(REFUSED)).await;
    let _ = stream.shutdown().await;
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

    /// The state of a server over `store`, its bounds taken from the store's config.
    pub fn new(store: Store) -> Arc<Self> {
        let cfg = store.config().clone();
        let long_polls = long_polls_max(cfg.http.connections_max);
        let followers_max = cfg.http.followers_max.min(long_polls);
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
            idempotent_tasks: Arc::new(Semaphore::new(cfg.http.connections_max)),
        })
    }
}

/// The HTTP/1.1 settings of every connection: header timeout and size bound, keep-alive.
fn connection_builder(cfg: &crate::base::config::Config) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(cfg.http.header_read_timeout_ms))
        .max_buf_size(cfg.http.header_bytes_max.max(8192))
        // A client that shuts its side after sending (`nc -N`, some scripts) still gets its
        // answer; an idle half-closed connection ends at idle_timeout_ms like any other.
        .half_close(true)
        .keep_alive(true);
    builder
}

/// The service of one connection: routes each request, and marks the connection busy until
/// the response is sent (a streamed body, SSE or NDJSON, holds it).
fn service(
    state: Arc<ServerState>,
    conn: Arc<conns::Conn>,
) -> impl hyper::service::HttpService<
    hyper::body::Incoming,
    ResBody = response::Body,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<response::Resp, std::convert::Infallible>> + Send,
> {
    service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let req = req.map(body::ReqBody::Stream);
        let st = state.clone();
        let busy = conns::Busy::new(conn.clone());
        async move {
            let r = dispatch::handle(st, req).await;
            Ok(busy.until_sent(r?))
        }
    })
}

/// Serves one connection over any byte stream with exactly the service of [`run`] (the fuzz
/// targets feed it an in-memory pipe). Returns when the connection closes; the peer's address
/// counts as loopback.
pub async fn serve_stream<IO>(state: &Arc<ServerState>, io: IO)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Some((registered, _)) = state.conns.register(std::net::Ipv4Addr::LOCALHOST.into()) else {
        return;
    };
    let builder = connection_builder(state.store.config());
    let conn = builder.serve_connection(
        TokioIo::new(hyper_errors::JsonErrors::new(io)),
        service(state.clone(), registered.conn.clone()),
    );
    let ctx = access::ConnCtx {
        conn: registered.conn.clone(),
        local: false,
    };
    let _ = ctx.scope(conn).await;
}

/// The admin socket's path in a data directory.
pub fn admin_socket_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("admin.sock")
}

/// Connections served at once on the admin socket.
const ADMIN_CONNECTIONS_MAX: usize = 16;

/// Serves the API on `<data>/admin.sock` (mode 0600) with admin rights: whoever may open the
/// file may administer the server (`shardbox backup` uses it). `None` when it cannot bind
/// (path too long for a socket, read-only directory): a warning, not a failure.
fn serve_admin_socket(
    state: Arc<ServerState>,
    stop_rx: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::PermissionsExt;
    let path = admin_socket_path(&state.store.config().data_dir);
    // A socket left by a killed server: the store's LOCK says none runs now.
    let _ = std::fs::remove_file(&path);
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "no admin socket");
            return None;
        }
    };
    if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!(path = %path.display(), error = %e, "cannot restrict the admin socket");
        let _ = std::fs::remove_file(&path);
        return None;
    }
    // The server's own user: it owns the socket file it just made.
    let owner = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&path).map(|m| m.uid()).unwrap_or(0)
    };
    let limit = Arc::new(Semaphore::new(ADMIN_CONNECTIONS_MAX));
    let builder = connection_builder(state.store.config());
    Some(tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Only this user (or root): the file's mode is the check, and a connection queued
            // before the mode was set must not get admin rights.
            match stream.peer_cred() {
                Ok(c) if c.uid() == owner || c.uid() == 0 => {}
                _ => {
                    tracing::warn!("admin socket: a connection from another user refused");
                    continue;
                }
            }
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                tracing::warn!(
                    max = ADMIN_CONNECTIONS_MAX,
                    "admin socket: too many connections"
                );
                continue;
            };
            let Some((registered, _)) = state.conns.register(std::net::Ipv4Addr::LOCALHOST.into())
            else {
                continue;
            };
            let state = state.clone();
            let builder = builder.clone();
            let stop_rx = stop_rx.clone();
            let idle_timeout = Duration::from_millis(state.store.config().http.idle_timeout_ms);
            // Its waits watch the client like any connection's (a Unix socket shows a hang-up
            // the same way).
            registered
                .conn
                .socket
                .set(std::os::fd::AsRawFd::as_raw_fd(&stream));
            tokio::spawn(async move {
                // Idle timeout, eviction and shutdown as for any connection.
                serve_conn(
                    stream,
                    &state,
                    &builder,
                    &registered,
                    stop_rx,
                    idle_timeout,
                    true,
                )
                .await;
                drop(registered);
                drop(permit);
            });
        }
    }))
}

/// Serves one accepted connection (plain or TLS) until it ends, idles out, is asked to make
/// room, or the server stops.
async fn serve_conn<IO>(
    io: IO,
    state: &Arc<ServerState>,
    builder: &http1::Builder,
    registered: &conns::Registered,
    mut stop_rx: watch::Receiver<bool>,
    idle_timeout: Duration,
    local: bool,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder.serve_connection(
        TokioIo::new(hyper_errors::JsonErrors::of_conn(
            io,
            registered.conn.clone(),
        )),
        service(state.clone(), registered.conn.clone()),
    );
    // The connection's requests run inside its future: they find it there ([`access::ConnCtx`]).
    let ctx = access::ConnCtx {
        conn: registered.conn.clone(),
        local,
    };
    ctx.scope(async move {
        tokio::pin!(conn);
        let me = registered.conn.clone();
        let idle = async {
            // Since when request bytes have waited on the idle connection, and its activity
            // stamp then (a request that ran since makes it a new wait).
            let mut pending_since: Option<(u64, std::time::Instant)> = None;
            loop {
                let idle = Duration::from_millis(me.idle_ms());
                let stamp = me.last_active_ms();
                if pending_since.is_some_and(|(s, _)| s != stamp) {
                    pending_since = None;
                }
                // A request that has arrived is answered: not idle while its bytes wait for
                // hyper (which reads them as soon as it runs — after a stall of any length),
                // for one more idle_timeout at most.
                if idle >= idle_timeout {
                    let waited = pending_since.map_or(Duration::ZERO, |(_, t)| t.elapsed());
                    if waited >= idle_timeout || !me.socket.has_pending_input() {
                        break;
                    }
                    pending_since.get_or_insert_with(|| (stamp, std::time::Instant::now()));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                tokio::time::sleep((idle_timeout - idle).max(Duration::from_millis(10))).await;
            }
        };
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = async { let _ = stop_rx.wait_for(|s| *s).await.map(|_| ()); } => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.as_mut().await;
            }
            // Idle too long, or asked to make room: hyper closes an idle connection at
            // once and lets a request in progress finish first.
            _ = idle => {
                registered.conn.closing();
                conn.as_mut().graceful_shutdown();
                let _ = conn.as_mut().await;
            }
            _ = registered.conn.evict.notified() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.as_mut().await;
            }
        }
    })
    .await
}

/// An accepted connection with everything its task needs.
struct Accepted {
    state: Arc<ServerState>,
    builder: http1::Builder,
    stop_rx: watch::Receiver<bool>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    done_tx: mpsc::Sender<()>,
    conn_limit: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
    registered: conns::Registered,
    /// Its place among `connections_max`, or `None` while an evicted connection gives one back.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    idle_timeout: Duration,
    header_timeout: Duration,
}

impl Accepted {
    /// Serves the connection to its end (TLS handshake first when configured).
    async fn serve(self, stream: tokio::net::TcpStream) {
        let Accepted {
            state,
            builder,
            stop_rx,
            tls,
            done_tx,
            conn_limit,
            refusals,
            registered,
            permit,
            idle_timeout,
            header_timeout,
        } = self;
        // Not idle while it waits for its place: it must not be taken to make room.
        let waiting = conns::Busy::new(registered.conn.clone());
        let permit = match permit {
            Some(p) => p,
            // Wait for the evicted connection to give its place back.
            None => {
                match tokio::time::timeout(Duration::from_millis(500), conn_limit.acquire_owned())
                    .await
                {
                    Ok(Ok(p)) => p,
                    _ => return refuse(stream, &refusals, tls.is_none()),
                }
            }
        };
        drop(waiting);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        match tls {
            None => {
                registered.conn.socket.set(fd);
                serve_conn(
                    stream,
                    &state,
                    &builder,
                    &registered,
                    stop_rx,
                    idle_timeout,
                    false,
                )
                .await
            }
            Some(acceptor) => {
                // The handshake is part of the request head: same deadline.
                let hs = tokio::time::timeout(header_timeout, acceptor.accept(stream)).await;
                match hs {
                    Ok(Ok(tls_stream)) => {
                        registered.conn.socket.set(fd);
                        serve_conn(
                            tls_stream,
                            &state,
                            &builder,
                            &registered,
                            stop_rx,
                            idle_timeout,
                            false,
                        )
                        .await
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            }
        }
        drop(registered);
        drop(permit);
        drop(done_tx);
    }
}

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish (up to
/// `shutdown_grace_ms`) and returns. The caller closes the store afterwards.
pub async fn run(
    listener: TcpListener,
    store: Store,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let cfg = store.config().clone();
    // A bad certificate fails here, before anything is started.
    let tls = tls::acceptor(&cfg).map_err(std::io::Error::other)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = ServerState::new(store);
    // Work that runs by itself (TTL sweep, queue timers, cron, retention) runs whenever the store
    // is served: started here, so no way of serving can forget it.
    let mut background = state.store.start_background();
    // Rate-limiter memory follows the clients active in the last seconds.
    let pruned = state.clone();
    background.push(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            pruned.access.prune();
        }
    }));
    let conn_limit = Arc::new(Semaphore::new(cfg.http.connections_max));
    let conns = state.conns.clone();
    let idle_timeout = Duration::from_millis(cfg.http.idle_timeout_ms);
    let refusals = Arc::new(Semaphore::new(REFUSALS_MAX));
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let admin_socket = serve_admin_socket(state.clone(), stop_rx.clone());
    let builder = connection_builder(&cfg);
    let header_timeout = Duration::from_millis(cfg.http.header_read_timeout_ms);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // The address's share first: at it, its longest-idle connection makes room.
        let Some((registered, made_room)) = conns.register(peer.ip()) else {
            refuse(stream, &refusals, tls.is_none());
            continue;
        };
        // At `connections_max`, the longest-idle connection makes room (unless the address's
        // own already did); with none idle, 503.
        let permit = match conn_limit.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) if made_room || conns.evict_idle(None) => None,
            Err(_) => {
                refuse(stream, &refusals, tls.is_none());
                continue;
            }
        };
        let job = Accepted {
            state: state.clone(),
            builder: builder.clone(),
            stop_rx: stop_rx.clone(),
            tls: tls.clone(),
            done_tx: done_tx.clone(),
            conn_limit: conn_limit.clone(),
            refusals: refusals.clone(),
            registered,
            permit,
            idle_timeout,
            header_timeout,
        };
        tokio::spawn(job.serve(stream));
    }
    drop(listener);
    tracing::info!("shutting down: no longer accepting connections");
    // Parked long-polls answer now; then connections close once their requests are done.
    state.store.engine().begin_shutdown();
    let _ = stop_tx.send(true);
    drop(done_tx);
    let grace = Duration::from_millis(cfg.http.shutdown_grace_ms);
    let deadline = tokio::time::Instant::now() + grace;
    if tokio::time::timeout_at(deadline, done_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!(
            open = state.conns.len(),
            "shutdown grace period over; dropping remaining connections"
        );
    }
    // Keyed requests whose client hung up still run: they finish (and keep their response)
    // before the store closes.
    let all = u32::try_from(cfg.http.connections_max).unwrap_or(u32::MAX);
    if tokio::time::timeout_at(deadline, state.idempotent_tasks.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period over with Idempotency-Key requests still running");
    }
    for task in background {
        task.abort();
    }
    if let Some(task) = admin_socket {
        task.abort();
        let _ = std::fs::remove_file(admin_socket_path(&cfg.data_dir));
    }
    Ok(())
}
