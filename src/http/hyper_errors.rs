//! JSON bodies for the errors hyper answers by itself.
//!
//! hyper rejects a request it cannot parse (a head over `header_bytes_max` → 431, a malformed
//! request line or header, two `Content-Length`s → 400, …) before any handler runs, and writes
//! the status with an empty body; hyper 1.x has no hook for it. The connection's byte stream is
//! wrapped so that such a reply — a 4xx/5xx head with `content-length: 0` and nothing after it,
//! which no handler of ours ever writes (every error of ours has a JSON body) — goes out with the
//! same `{"error":{"code","message"}}` body as every other error.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection's stream whose hyper-raised error replies get JSON bodies.
pub struct JsonErrors<S> {
    inner: S,
    /// A rewritten reply being written: bytes and how many went out.
    pending: Option<(Vec<u8>, usize)>,
    /// The connection whose socket this is: told before the socket closes, so nothing watches
    /// a descriptor number that may be reused ([`super::peer::SocketFd`]).
    conn: Option<std::sync::Arc<super::conns::Conn>>,
    scan: HeadScan,
}

impl<S> JsonErrors<S> {
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub fn new(inner: S) -> Self {
        JsonErrors {
            inner,
            pending: None,
            conn: None,
            scan: HeadScan::default(),
        }
    }

    /// As `new`, for the stream of `conn` (whose socket it forgets as the stream is dropped).
    pub fn of_conn(inner: S, conn: std::sync::Arc<super::conns::Conn>) -> Self {
        JsonErrors {
            inner,
            pending: None,
            conn: Some(conn),
            scan: HeadScan::default(),
        }
    }
}

impl<S> Drop for JsonErrors<S> {
    fn drop(&mut self) {
        // Runs before `inner` (and its descriptor) is dropped.
        if let Some(c) = &self.conn {
            c.socket.closing();
        }
    }
}

/// The reply to write instead of `buf`, when `buf` is a bodiless error head from hyper.
pub fn rewrite(buf: &[u8]) -> Option<Vec<u8>> {
    if !(buf.starts_with(b"HTTP/1.1 4") || buf.starts_with(b"HTTP/1.1 5")) || buf.len() < 12 {
        return None;
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    if end + 4 != buf.len() {
        return None; // body bytes follow: one of ours
    }
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let headers: Vec<&str> = lines.collect();
    if !headers
        .iter()
        .any(|h| h.eq_ignore_ascii_case("content-length: 0"))
    {
        return None;
    }
    let status: u16 = status_line.get(9..12)?.parse().ok()?;
    let (code, message) = match status {
        431 => (
            "request_header_fields_too_large",
            "the request head is larger than header_bytes_max: send fewer or smaller headers",
        ),
        414 => (
            "uri_too_long",
            "the request target is longer than hyper accepts: shorten the path and query",
        ),
        400 => (
            "bad_request",
            "malformed HTTP/1.1 request: check the request line, the header syntax and that Content-Length is given once",
        ),
        408 => (
            "request_timeout",
            "the request head did not arrive within header_read_timeout_ms",
        ),
        505 => (
            "http_version_not_supported",
            "only HTTP/1.1 (and 1.0) are served",
        ),
        _ => ("bad_request", "the request could not be parsed"),
    };
    let body = format!("{{\"error\":{{\"code\":\"{code}\",\"message\":\"{message}\"}}}}\n");
    let mut out = String::with_capacity(head.len() + body.len() + 64);
    out.push_str(status_line);
    out.push_str("\r\n");
    for h in headers {
        if !h.eq_ignore_ascii_case("content-length: 0") {
            out.push_str(h);
            out.push_str("\r\n");
        }
    }
    out.push_str("content-type: application/json\r\n");
    out.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    out.push_str(&body);
    Some(out.into_bytes())
}

/// What replaces a request head with a bare LF in it: a request line hyper refuses (400,
/// then the connection closes).
const MALFORMED: &[u8] = b"BARE LF\r\n\r\n";

/// Where the bare-LF check is in a request head that arrives over several reads.
#[derive(Default)]
struct HeadScan {
    in_head: bool,
    /// Bytes of the current line, line ends aside.
    line_len: usize,
    prev_cr: bool,
}

impl HeadScan {
    /// Reads head bytes; true at a line ended by LF alone. hyper (httparse) takes a lone LF
    /// as a line end, as RFC 9112 §2.2 allows; a proxy in front that does not would read other
    /// header boundaries than hyper does (request smuggling), so such a head is refused. Stops
    /// at the head's end: the body is not looked at.
    fn bare_lf(&mut self, bytes: &[u8]) -> bool {
        if !self.in_head {
            *self = HeadScan {
                in_head: true,
                ..HeadScan::default()
            };
        }
        for &b in bytes {
            match b {
                b'\n' if !self.prev_cr => {
                    self.in_head = false;
                    return true;
                }
                b'\n' if self.line_len == 0 => {
                    self.in_head = false;
                    return false;
                }
                b'\n' => {
                    self.line_len = 0;
                    self.prev_cr = false;
                }
                b'\r' => self.prev_cr = true,
                _ => {
                    self.prev_cr = false;
                    self.line_len += 1;
                }
            }
        }
        false
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonErrors<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        // A head starts when no request is in progress on the connection (pipelined heads
        // behind a body are not looked at).
        let Some(conn) = &this.conn else {
            return Poll::Ready(Ok(()));
        };
        let got = &buf.filled()[before..];
        if !got.is_empty()
            && (this.scan.in_head || conn.between_requests())
            && this.scan.bare_lf(got)
        {
            buf.set_filled(before);
            let n = MALFORMED.len().min(buf.remaining());
            buf.put_slice(&MALFORMED[..n]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> JsonErrors<S> {
    /// Writes what is pending; Ready(Ok) once all of it is out.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((data, off)) = self.pending.as_mut() {
            if *off >= data.len() {
                self.pending = None;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &data[*off..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => *off += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonErrors<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.pending.is_none() {
            match rewrite(buf) {
                Some(reply) => self.pending = Some((reply, 0)),
                None => return Pin::new(&mut self.inner).poll_write(cx, buf),
            }
        }
        // hyper calls again with the same bytes after Pending; they count as written once the
        // reply that replaces them is out.
        match self.drain(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs.iter().find(|b| !b.is_empty());
        let only_one = bufs.iter().filter(|b| !b.is_empty()).count() == 1;
        match first {
            Some(b) if only_one && (self.pending.is_some() || rewrite(b).is_some()) => {
                let b: &[u8] = b;
                self.poll_write(cx, b)
            }
            _ => Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_shutdown(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bodiless_error_heads_are_rewritten() {
        let hyper_431 =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(rewrite(hyper_431).expect("rewritten")).expect("utf8");
        assert!(out.starts_with("HTTP/1.1 431 "));
        let (head, body) = out.split_once("\r\n\r\n").expect("head");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["error"]["code"], "request_header_fields_too_large");
        // Ours: a body follows, or the length is not 0, or it is not an error.
        assert!(rewrite(b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\n").is_none());
        assert!(rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nx").is_none());
        assert!(rewrite(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(rewrite(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
    }
}
