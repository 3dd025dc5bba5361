//! The accept loop: connection limits (a new connection takes the place of the longest-idle
//! one, else 503), the TLS handshake, and graceful shutdown.

use super::admin_socket::{admin_socket_path, serve_admin_socket};
use super::connection::serve_conn;
use super::{conns, tls, ServerState};
use crate::store::Store;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};

const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 93\r\n\r\n{\"error\":{\"code\":\"too_many_connections\",\"message\":\"connections_max reached; retry shortly\"}}\n";

/// The answer to plain HTTP on the TLS port (any first byte but a TLS handshake record's).
const PLAIN_ON_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 92\r\n\r\n{\"error\":{\"code\":\"https_required\",\"message\":\"this port speaks HTTPS: use an https:// URL\"}}\n";

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

async fn answer_refused(stream: tokio::net::TcpStream, _permit: tokio::sync::OwnedSemaphorePermit) {
    answer_plain(stream, REFUSED).await;
}

/// Reads the request's first bytes (so its client sees an answer to it, not a reset), writes
/// `answer` and closes.
async fn answer_plain(mut stream: tokio::net::TcpStream, answer: &[u8]) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(answer)).await;
    let _ = stream.shutdown().await;
}

/// An accepted connection with everything its task needs.
struct Accepted {
    state: Arc<ServerState>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    done_tx: mpsc::Sender<()>,
    conn_limit: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
    registered: conns::Registered,
    /// Its place among `connections_max`, or `None` while an evicted connection gives one back.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Accepted {
    /// Serves the connection to its end (TLS handshake first when configured).
    async fn serve(self, stream: tokio::net::TcpStream) {
        let Accepted {
            state,
            tls,
            done_tx,
            conn_limit,
            refusals,
            registered,
            permit,
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
            None => serve_conn(stream, fd, &state, &registered, false).await,
            Some(acceptor) => {
                // The handshake is part of the request head: same deadline.
                let header_timeout =
                    Duration::from_millis(state.store.config().http.header_read_timeout_ms);
                // One deadline for the first byte and the handshake together.
                let deadline = tokio::time::Instant::now() + header_timeout;
                let mut first = [0u8; 1];
                match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
                    // Plain HTTP on the TLS port: answered in plain HTTP, which its client
                    // reads, rather than with a TLS alert that curl shows as "HTTP/0.9".
                    Ok(Ok(1)) if first[0] != 0x16 => answer_plain(stream, PLAIN_ON_TLS).await,
                    Ok(Ok(1)) => {
                        let hs = tokio::time::timeout_at(deadline, acceptor.accept(stream)).await;
                        match hs {
                            Ok(Ok(tls)) => serve_conn(tls, fd, &state, &registered, false).await,
                            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!("TLS handshake timed out"),
                        }
                    }
                    // Closed, failed or silent until the deadline.
                    _ => tracing::debug!("no TLS handshake before the deadline"),
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
    let access_log =
        super::access_log::AccessLog::open(&cfg.http.access_log, cfg.http.access_log_format)?;
    let state = ServerState::with_access_log(store, access_log);
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
    // The status page's last minute.
    let sampled = state.clone();
    background.push(tokio::spawn(async move {
        loop {
            tokio::time::sleep(sampled.window.step()).await;
            sampled.window.tick(sampled.store.engine());
        }
    }));
    let conn_limit = Arc::new(Semaphore::new(cfg.http.connections_max));
    let conns = state.conns.clone();
    let refusals = Arc::new(Semaphore::new(REFUSALS_MAX));
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    // Connections keep no timer between requests: a sweep closes the idle ones.
    let swept = state.clone();
    let idle_timeout_ms = cfg.http.idle_timeout_ms;
    let sweep_every = Duration::from_millis((idle_timeout_ms / 4).clamp(10, 1000));
    background.push(tokio::spawn(async move {
        loop {
            tokio::time::sleep(sweep_every).await;
            swept.conns.sweep_idle(idle_timeout_ms);
        }
    }));
    let admin_socket = serve_admin_socket(state.clone());
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
            tls: tls.clone(),
            done_tx: done_tx.clone(),
            conn_limit: conn_limit.clone(),
            refusals: refusals.clone(),
            registered,
            permit,
        };
        tokio::spawn(job.serve(stream));
    }
    drop(listener);
    tracing::info!("shutting down: no longer accepting connections");
    // Parked long-polls answer now; then connections close once their requests are done.
    state.store.engine().begin_shutdown();
    state.conns.stop_all();
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
    if let Some(log) = &state.access_log {
        log.sync(Duration::from_secs(1));
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_hand_written_answers_say_their_own_length() {
        for (answer, code) in [
            (super::REFUSED, "too_many_connections"),
            (super::PLAIN_ON_TLS, "https_required"),
        ] {
            let text = std::str::from_utf8(answer).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|n| n.trim().parse::<usize>().ok());
            assert_eq!(length, Some(body.len()), "{text}");
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["error"]["code"], code);
            assert!(body.ends_with('\n'));
        }
    }
}
