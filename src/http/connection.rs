//! One connection: hyper's HTTP/1.1 settings, the service that routes its requests, and the
//! loop that ends it when it idles, is asked to make room, or the server stops.

use super::{access, body, conns, dispatch, hyper_errors, response, ServerState};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

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
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
pub async fn serve_stream<IO>(state: &Arc<ServerState>, io: IO)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Some((registered, _)) = state.conns.register(std::net::Ipv4Addr::LOCALHOST.into()) else {
        return;
    };
    let conn = state.http1.serve_connection(
        TokioIo::new(hyper_errors::JsonErrors::new(io)),
        service(state.clone(), registered.conn.clone()),
    );
    let ctx = access::ConnCtx {
        conn: registered.conn.clone(),
        local: false,
    };
    let _ = ctx.scope(conn).await;
}

/// Serves one accepted connection (plain or TLS, or the admin socket's: `local`) until it ends,
/// idles out, is asked to make room, or the server stops. `fd` is its socket, which the waits
/// of its requests watch for the client leaving ([`super::peer`]).
pub(super) async fn serve_conn<IO>(
    io: IO,
    fd: std::os::fd::RawFd,
    state: &Arc<ServerState>,
    registered: &conns::Registered,
    mut stop_rx: watch::Receiver<bool>,
    local: bool,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    registered.conn.socket.set(fd);
    let idle_timeout = Duration::from_millis(state.store.config().http.idle_timeout_ms);
    let conn = state.http1.serve_connection(
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
