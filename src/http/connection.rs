//! One connection, as the listener, the admin socket and the fuzz targets hand it over: its
//! context for the requests it carries ([`access::ConnCtx`]), served by [`super::h1`].

use super::{access, conns, h1, ServerState};
use std::sync::Arc;

/// Serves one connection over any byte stream exactly as [`super::run`] does (the fuzz
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
    let ctx = access::ConnCtx {
        conn: registered.conn.clone(),
        local: false,
    };
    ctx.scope(h1::serve(io, state, &registered.conn)).await;
}

/// Serves one accepted connection (plain or TLS, or the admin socket's: `local`) until it ends,
/// idles out, is asked to make room, or the server stops. `fd` is its socket, which the waits
/// of its requests watch for the client leaving ([`super::peer`]).
pub(super) async fn serve_conn<IO>(
    io: IO,
    fd: std::os::fd::RawFd,
    state: &Arc<ServerState>,
    registered: &conns::Registered,
    local: bool,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    registered.conn.socket.set(fd);
    // The connection's requests run inside its future: they find it there.
    let ctx = access::ConnCtx {
        conn: registered.conn.clone(),
        local,
    };
    ctx.scope(h1::serve(io, state, &registered.conn)).await;
}
