//! One connection's loop: read a head, run its handler (feeding it the body it asks for),
//! write the response, and again — until the client closes, asks to, idles out, is asked to
//! make room, or the server stops.

use super::encode::{self, Length};
use super::head::{self, Framing, Head, Refusal};
use super::incoming::{self, Chunked, Decoder, Fed, Feeder, Incoming};
use crate::http::body::ReqBody;
use crate::http::dispatch::{self, Begun, Ticket};
use crate::http::error::ApiError;
use crate::http::response::Resp;
use crate::http::route_table::Reply;
use crate::http::{conns, ServerState};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper::header::CONTENT_LENGTH;
use hyper::{Method, Request, Version};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Response bytes gathered before they are written (a streamed body is written as it comes,
/// in pieces of up to this; a larger whole body goes out without being copied here).
const OUT_BYTES_MAX: usize = 64 << 10;

/// What a closing connection reads and drops after its last response, so the client's
/// unread request bytes do not turn the close into a reset that destroys the response.
const LINGER_BYTES_MAX: usize = 1 << 20;
const LINGER: Duration = Duration::from_secs(1);

/// How long closing a connection at rest may take (a TLS `close_notify`).
const CLOSE: Duration = Duration::from_millis(250);

/// A connection being served.
pub struct Connection<'a, S> {
    io: S,
    /// Bytes read and not yet parsed or handed to a body.
    rbuf: BytesMut,
    /// Response bytes not yet written.
    out: Vec<u8>,
    /// Bytes were written and the stream has not yet confirmed a flush (TLS buffers them).
    unflushed: bool,
    state: &'a Arc<ServerState>,
    conn: &'a Arc<conns::Conn>,
}

impl<S> Drop for Connection<'_, S> {
    fn drop(&mut self) {
        // Before `io` (and its descriptor) is dropped: nothing may watch a descriptor number
        // that may be reused ([`crate::http::peer::SocketFd`]).
        self.conn.socket.closing();
    }
}

/// What waiting for the next request gave. (A head is large, and returned once a request:
/// boxing it would cost an allocation every request to save a move.)
#[allow(clippy::large_enum_variant)]
enum Next {
    Head(Head),
    Close,
    Refuse(Refusal),
}

/// Serves `io` until the connection ends.
pub async fn serve<S>(io: S, state: &Arc<ServerState>, conn: &Arc<conns::Conn>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut c = Connection {
        io,
        rbuf: BytesMut::with_capacity(8 << 10),
        out: Vec::with_capacity(4 << 10),
        unflushed: false,
        state,
        conn,
    };
    c.run().await;
}

impl<S> Connection<'_, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn run(&mut self) {
        loop {
            // One request's share of the task's budget: a client pipelining requests that
            // answer at once (no socket wait in between) still lets the thread serve others.
            tokio::task::consume_budget().await;
            let head = match self.next_head().await {
                Next::Head(h) => h,
                Next::Close => return self.close().await,
                Next::Refuse(r) => return self.refuse(r).await,
            };
            let busy = conns::Busy::new(self.conn.clone());
            let version = head.version;
            let is_head = head.method == Method::HEAD;
            let mut keep_alive = head.keep_alive;
            let (body, mut feeder) = self.body(&head);
            let refused = head.refused;
            let mut req = Request::new(ReqBody::Stream(body));
            *req.method_mut() = head.method;
            *req.uri_mut() = head.uri;
            *req.version_mut() = version;
            *req.headers_mut() = head.headers;
            // A read reflects at least what was applied before it ran (taken after, a standby's
            // position could run ahead of what it read); a write, and a read that waits for a
            // position, what was there once it was done.
            let before = (matches!(*req.method(), Method::GET | Method::HEAD)
                && !req
                    .uri()
                    .query()
                    .is_some_and(|q| q.contains("min_position=")))
            .then(|| self.state.store.engine().position());
            let (mut ticket, begun) = dispatch::begin(self.state, req, refused);
            let (outcome, fed) = match begun {
                Begun::Now(outcome) => (outcome, None),
                Begun::Later(mut reply) => {
                    match self.drive(&ticket, &mut reply, feeder.as_mut()).await {
                        Some(done) => done,
                        // The client went away while an earlier response was written.
                        None => return,
                    }
                }
            };
            let resp = dispatch::finish(self.state, &mut ticket, outcome);
            // The next request starts where this body ends: known only when it was read to
            // its end (or the rest of it is already here).
            let in_step = match (&mut feeder, fed) {
                (None, _) | (Some(_), Some(Fed::Whole)) => true,
                (Some(f), _) => f.drain_buffered(&mut self.rbuf) == Fed::Whole,
            };
            // A `100 Continue` cut short by a full socket is finished before the answer.
            if let Some(f) = &feeder {
                self.out.extend_from_slice(f.unsent_continue());
            }
            keep_alive &= in_step && !self.state.conns.is_stopping() && !self.conn.is_evicting();
            let written = self
                .respond(
                    resp,
                    version,
                    is_head,
                    &mut keep_alive,
                    ticket.id.as_bytes(),
                    before,
                )
                .await;
            drop(busy);
            if written.is_err() {
                return;
            }
            if !keep_alive {
                return self.linger().await;
            }
        }
    }

    /// Ends the connection at rest: TLS says `close_notify`, TCP sends its FIN (bounded: a
    /// client that does not read cannot hold the close).
    async fn close(&mut self) {
        self.conn.closing();
        let _ = tokio::time::timeout(CLOSE, self.io.shutdown()).await;
    }

    /// The body that follows `head`: whole when it is already in the buffer, else fed.
    fn body(&mut self, head: &Head) -> (Incoming, Option<Feeder>) {
        let fed = |d| {
            let (body, feeder) = Feeder::new(d, head.expect_continue);
            (body, Some(feeder))
        };
        match head.framing {
            Framing::Empty => (Incoming::whole(Bytes::new()), None),
            Framing::Length(n) if self.rbuf.len() as u64 >= n => {
                let bytes = self.rbuf.split_to(n as usize).freeze();
                (Incoming::whole(bytes), None)
            }
            Framing::Length(n) => fed(Decoder::Length(n)),
            Framing::Chunked => fed(Decoder::Chunked(Chunked::Size(0))),
        }
    }

    /// Runs a waiting handler to its outcome, feeding its body as it asks and writing out what
    /// an earlier (pipelined) response left. `None` when that write failed.
    async fn drive(
        &mut self,
        ticket: &Ticket,
        reply: &mut Reply,
        mut feeder: Option<&mut Feeder>,
    ) -> Option<(Result<Resp, ApiError>, Option<Fed>)> {
        let (io, rbuf, out, unflushed) = (
            &mut self.io,
            &mut self.rbuf,
            &mut self.out,
            &mut self.unflushed,
        );
        let mut fed = None;
        poll_fn(|cx| {
            if let Poll::Ready(outcome) = ticket.poll(reply, cx) {
                return Poll::Ready(Some((outcome, fed)));
            }
            // Answers come in order: an earlier one goes out before this body is asked for.
            if !out.is_empty() || *unflushed {
                match poll_write_out(cx, io, out, unflushed) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return Poll::Ready(None),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if let (None, Some(f)) = (fed, feeder.as_mut()) {
                if let Poll::Ready(done) = f.poll_feed(cx, io, rbuf) {
                    fed = Some(done);
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Reads until a whole head is in the buffer (or the connection should end).
    async fn next_head(&mut self) -> Next {
        let state = self.state;
        let limits = &state.store.config().http;
        let head_bytes_max = limits.header_bytes_max.max(8192);
        let mut deadline = None;
        loop {
            // Empty lines before a request line are ignored (RFC 9112 §2.2): a client that
            // ends a body with an extra CRLF is idle after it, not half-way through a head.
            let blank = self
                .rbuf
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            if blank > 0 {
                let _ = self.rbuf.split_to(blank);
            }
            if !self.rbuf.is_empty() {
                match head::parse(&mut self.rbuf, head_bytes_max) {
                    Ok(Some(h)) => return Next::Head(h),
                    Ok(None) => {}
                    Err(r) => return Next::Refuse(r),
                }
            }
            // Pipelined requests' answers go out together, before the connection waits.
            if self.flush().await.is_err() {
                return Next::Close;
            }
            let read = if self.rbuf.is_empty() {
                match self.between_requests().await {
                    Some(r) => r,
                    None => return Next::Close,
                }
            } else {
                // Part of a head: the rest must come within the header timeout.
                let d = *deadline.get_or_insert_with(|| {
                    tokio::time::Instant::now()
                        + Duration::from_millis(limits.header_read_timeout_ms)
                });
                let (io, rbuf) = (&mut self.io, &mut self.rbuf);
                match tokio::time::timeout_at(d, poll_fn(|cx| incoming::poll_read(cx, io, rbuf)))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => return Next::Refuse(Refusal::timed_out()),
                }
            };
            match read {
                Ok(0) | Err(_) => return Next::Close,
                Ok(_) => {}
            }
        }
    }

    /// Waits on an idle connection for the next request's first bytes; `None` when it is to
    /// close instead (the server stops, it makes room for a newcomer, or it idled out).
    async fn between_requests(&mut self) -> Option<std::io::Result<usize>> {
        let (io, rbuf, conn, conns) = (&mut self.io, &mut self.rbuf, self.conn, &self.state.conns);
        let idle_timeout_ms = self.state.store.config().http.idle_timeout_ms;
        loop {
            if conns.is_stopping() || conn.is_evicting() {
                return None;
            }
            tokio::select! {
                biased;
                r = poll_fn(|cx| incoming::poll_read(cx, io, rbuf)) => return Some(r),
                _ = conn.evict.notified() => {
                    if conns.is_stopping() || conn.is_evicting() {
                        return None;
                    }
                    // The idle sweep's call: a request began since, or its bytes wait to be
                    // read (after a stall the sweep can come before the read) — not idle.
                    if conn.idle_ms() < idle_timeout_ms || conn.socket.has_pending_input() {
                        continue;
                    }
                    conn.closing();
                    return None;
                }
            }
        }
    }

    /// Writes `resp` (head, then body); `keep_alive` is cleared when the body's framing
    /// needs the connection to end.
    async fn respond(
        &mut self,
        resp: Resp,
        version: Version,
        is_head: bool,
        keep_alive: &mut bool,
        request_id: &[u8],
        position: Option<crate::engine::feed::Position>,
    ) -> std::io::Result<()> {
        let (parts, mut body) = resp.into_parts();
        let with_body = !is_head && encode::may_have_body(parts.status);
        let length = match body.size_hint().exact() {
            _ if !encode::may_have_body(parts.status) => Length::None,
            // HEAD: the length a GET would have (the handler's own header, else the body's).
            _ if is_head && parts.headers.contains_key(CONTENT_LENGTH) => Length::None,
            Some(n) => Length::Known(n),
            // HEAD of a stream: no length can be told.
            None if is_head => Length::None,
            None => Length::Stream,
        };
        if length == Length::Stream && version == Version::HTTP_10 {
            *keep_alive = false; // the end of the body is the end of the connection
        }
        // Not to a caller who was refused: the position names the store's history.
        let position = match parts.status.as_u16() {
            401 | 403 => None,
            _ => Some(position.unwrap_or_else(|| self.state.store.engine().position())),
        };
        encode::head(
            &mut self.out,
            version,
            parts.status,
            &parts.headers,
            length,
            *keep_alive,
            request_id,
            position.map(|p| (p.generation.0, p.lsn)),
        );
        if !with_body {
            return self.flush_unless_pipelined(*keep_alive).await;
        }
        let chunked = length == Length::Stream && version == Version::HTTP_11;
        loop {
            // A frame that is ready is gathered; one that is not yet (a stream between
            // events) waits with everything before it written.
            let frame = match futures_util::FutureExt::now_or_never(body.frame()) {
                Some(f) => f,
                None => {
                    self.flush().await?;
                    body.frame().await
                }
            };
            let Some(frame) = frame else { break };
            let Ok(frame) = frame;
            // Trailers are not sent (none of shardbox's bodies has any).
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if chunked {
                encode::chunk(&mut self.out, &data);
            } else if data.len() > OUT_BYTES_MAX {
                // Straight from its buffer: a large value is not copied into `out`.
                self.flush().await?;
                let stall = self.write_stall();
                let (io, unflushed, mut rest) = (&mut self.io, &mut self.unflushed, &data[..]);
                unless_stalled(stall, |cx| {
                    let before = rest.len();
                    let step = poll_write_slice(cx, io, &mut rest, unflushed);
                    (step, rest.len() != before)
                })
                .await?;
                continue;
            } else {
                self.out.extend_from_slice(&data);
            }
            if self.out.len() >= OUT_BYTES_MAX {
                self.flush().await?;
            }
        }
        if chunked {
            self.out.extend_from_slice(encode::LAST_CHUNK);
        }
        if length == Length::Stream {
            return self.flush().await;
        }
        self.flush_unless_pipelined(*keep_alive).await
    }

    /// Writes out the response unless the next request is already here (pipelined): its
    /// answer then goes out with this one.
    async fn flush_unless_pipelined(&mut self, keep_alive: bool) -> std::io::Result<()> {
        if keep_alive && !self.rbuf.is_empty() && self.out.len() < OUT_BYTES_MAX {
            return Ok(());
        }
        self.flush().await
    }

    /// Writes out `out`. A client that takes none of it for `idle_timeout_ms` is gone: the
    /// write fails (a connection busy writing is never idle, so nothing else would end it).
    async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() && !self.unflushed {
            return Ok(());
        }
        let stall = self.write_stall();
        let (io, out, unflushed) = (&mut self.io, &mut self.out, &mut self.unflushed);
        let done = unless_stalled(stall, |cx| {
            let before = out.len();
            let step = poll_write_out(cx, io, out, unflushed);
            (step, out.len() != before)
        })
        .await;
        if self.out.capacity() > 4 * OUT_BYTES_MAX {
            self.out.shrink_to(OUT_BYTES_MAX);
        }
        done
    }

    /// How long a write may take nothing before the client counts as gone.
    fn write_stall(&self) -> Duration {
        Duration::from_millis(self.state.store.config().http.idle_timeout_ms)
    }

    /// Answers a refused head with its JSON error and ends the connection.
    async fn refuse(&mut self, r: Refusal) {
        self.conn.closing();
        crate::base::metrics::record_status(r.status);
        let e = crate::http::error::ApiError::new(r.status, r.code, r.message);
        let resp = crate::http::response::error(&e);
        let mut keep_alive = false;
        let id = crate::http::access::request_id(&hyper::HeaderMap::new());
        if self
            .respond(
                resp,
                Version::HTTP_11,
                false,
                &mut keep_alive,
                id.as_bytes(),
                None,
            )
            .await
            .is_ok()
        {
            self.linger().await;
        }
    }

    /// Ends the connection after its last response: our side is shut, and what the client
    /// still sends is read and dropped for a moment (bounded), so a close with unread bytes
    /// does not reset the connection before the client has read the response.
    async fn linger(&mut self) {
        // Not a connection to make room with: it is closing already.
        self.conn.closing();
        let _ = tokio::time::timeout(LINGER, async {
            if self.flush().await.is_err() || self.io.shutdown().await.is_err() {
                return;
            }
            let mut sink = [0u8; 8192];
            let mut seen = 0;
            while seen < LINGER_BYTES_MAX {
                match self.io.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen += n,
                }
            }
        })
        .await;
    }
}

/// Polls `step` — a write that reports whether it made progress — to its end; fails with
/// `TimedOut` once it has made none for `stall`. The timer is made only when a write has to
/// wait (most complete at once).
async fn unless_stalled(
    stall: Duration,
    mut step: impl FnMut(&mut Context<'_>) -> (Poll<std::io::Result<()>>, bool),
) -> std::io::Result<()> {
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    poll_fn(|cx| {
        let (done, progressed) = step(cx);
        if let Poll::Ready(r) = done {
            return Poll::Ready(r);
        }
        let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        if progressed {
            t.as_mut().reset(tokio::time::Instant::now() + stall);
        }
        match t.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::ErrorKind::TimedOut.into())),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Writes what it can of `out` without waiting (what was written is taken off it), then
/// flushes; `Ready` once all of it is out. `unflushed` is kept while a flush is pending (TLS
/// may take every byte and still hold some of them), so the next call flushes again.
fn poll_write_out<S: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    io: &mut S,
    out: &mut Vec<u8>,
    unflushed: &mut bool,
) -> Poll<std::io::Result<()>> {
    let mut rest = &out[..];
    let step = poll_write_slice(cx, io, &mut rest, unflushed);
    let written = out.len() - rest.len();
    out.drain(..written);
    step
}

/// Writes what it can of `rest` without waiting (taking it off the front), then flushes;
/// `Ready` once all of it is out and flushed (`unflushed` as for [`poll_write_out`]).
fn poll_write_slice<S: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    io: &mut S,
    rest: &mut &[u8],
    unflushed: &mut bool,
) -> Poll<std::io::Result<()>> {
    while !rest.is_empty() {
        match Pin::new(&mut *io).poll_write(cx, rest) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => {
                *rest = &rest[n..];
                *unflushed = true;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
    match Pin::new(&mut *io).poll_flush(cx) {
        Poll::Ready(Ok(())) => {
            *unflushed = false;
            Poll::Ready(Ok(()))
        }
        other => other,
    }
}
