//! A request's body, as its handler reads it and as the connection feeds it.
//!
//! A body already in the connection's buffer when its head is parsed (the common case: a
//! small PUT arrives in one segment) is handed over whole, without a copy. Any other body is
//! fed on demand: the handler's reads ask for more, and the connection — which polls the
//! handler's future itself — reads the socket only then, decodes (`Content-Length` or
//! chunked) and passes one piece at a time. So a handler that refuses a request before reading
//! its body never makes the connection read it, `Expect: 100-continue` is answered only when
//! the body is wanted, and at most one piece waits between the two sides.

use bytes::{Bytes, BytesMut};
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite};

/// Bytes read from the socket at once while a body streams.
const READ_BYTES: usize = 64 << 10;

/// A chunk-size line (with its extensions) longer than this is refused.
const CHUNK_LINE_BYTES_MAX: usize = 4096;

/// Chunk-size lines of one body, in all: beyond this (tiny chunks with long extensions) the
/// body is refused — its data could otherwise stream without end below every size bound.
const CHUNK_LINES_BYTES_MAX: usize = 16 << 10;

/// Trailer fields after the last chunk, in all; more is refused.
const TRAILER_BYTES_MAX: usize = 16 << 10;

/// A request body that cannot be read to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyError(pub &'static str);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// A request's body as its handler reads it.
pub struct Incoming(Kind);

enum Kind {
    /// Whole (or empty): `None` once taken.
    Whole(Option<Bytes>),
    /// Fed by the connection.
    Fed(Arc<Mutex<Feed>>),
}

/// What the two sides of a fed body share.
#[derive(Default)]
struct Feed {
    piece: Option<Bytes>,
    ended: bool,
    failed: Option<BodyError>,
    /// The handler waits for a piece.
    wanted: bool,
    /// The handler dropped the body.
    dropped: bool,
    reader: Option<Waker>,
    feeder: Option<Waker>,
}

fn lock(m: &Mutex<Feed>) -> std::sync::MutexGuard<'_, Feed> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn store(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

impl Incoming {
    /// A body of these bytes (empty for none).
    pub fn whole(bytes: Bytes) -> Incoming {
        Incoming(Kind::Whole((!bytes.is_empty()).then_some(bytes)))
    }

    /// The next piece of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Option<Result<Bytes, BodyError>> {
        poll_fn(|cx| self.poll_chunk(cx)).await
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        let feed = match &mut self.0 {
            Kind::Whole(b) => return Poll::Ready(b.take().map(Ok)),
            Kind::Fed(f) => f,
        };
        let mut f = lock(feed);
        if let Some(piece) = f.piece.take() {
            if let Some(w) = &f.feeder {
                w.wake_by_ref();
            }
            return Poll::Ready(Some(Ok(piece)));
        }
        if let Some(e) = f.failed {
            return Poll::Ready(Some(Err(e)));
        }
        if f.ended {
            return Poll::Ready(None);
        }
        f.wanted = true;
        store(&mut f.reader, cx);
        if let Some(w) = &f.feeder {
            w.wake_by_ref();
        }
        Poll::Pending
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if let Kind::Fed(f) = &self.0 {
            let mut f = lock(f);
            f.dropped = true;
            if let Some(w) = &f.feeder {
                w.wake_by_ref();
            }
        }
    }
}

/// How a body is delimited on the wire, and how much of it is left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoder {
    /// `Content-Length`: bytes left.
    Length(u64),
    Chunked(Chunked),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// Before a chunk-size line; the bytes of the size lines so far beyond the sizes themselves.
    Size(usize),
    /// Inside a chunk: bytes left (and the size lines' count, carried on).
    Data(u64, usize),
    /// After a chunk's data: its CRLF.
    DataEnd(usize),
    /// After the last chunk: trailer bytes seen so far.
    Trailers(usize),
    Done,
}

/// One step of decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    Data(Bytes),
    End,
}

impl Decoder {
    /// Takes the next piece of the body off the front of `buf`; `Ok(None)` when `buf` holds
    /// too little to tell.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Piece>, BodyError> {
        match self {
            Decoder::Length(0) => Ok(Some(Piece::End)),
            Decoder::Length(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = (*left).min(buf.len() as u64) as usize;
                *left -= n as u64;
                Ok(Some(Piece::Data(buf.split_to(n).freeze())))
            }
            Decoder::Chunked(state) => loop {
                match *state {
                    Chunked::Done => return Ok(Some(Piece::End)),
                    Chunked::Size(lines) => {
                        let Some(line) = take_line(buf, CHUNK_LINE_BYTES_MAX)? else {
                            return Ok(None);
                        };
                        let size = chunk_size(&line)?;
                        let lines = lines + line.len().saturating_sub(4);
                        if lines > CHUNK_LINES_BYTES_MAX {
                            return Err(BodyError(
                                "the chunked body's chunk extensions are too long",
                            ));
                        }
                        *state = if size == 0 {
                            Chunked::Trailers(0)
                        } else {
                            Chunked::Data(size, lines)
                        };
                    }
                    Chunked::Data(left, lines) => {
                        if buf.is_empty() {
                            return Ok(None);
                        }
                        let n = left.min(buf.len() as u64) as usize;
                        *state = if n as u64 == left {
                            Chunked::DataEnd(lines)
                        } else {
                            Chunked::Data(left - n as u64, lines)
                        };
                        return Ok(Some(Piece::Data(buf.split_to(n).freeze())));
                    }
                    Chunked::DataEnd(lines) => {
                        if buf.len() < 2 {
                            return Ok(None);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err(BodyError("a chunk's data is not followed by CRLF"));
                        }
                        let _ = buf.split_to(2);
                        *state = Chunked::Size(lines);
                    }
                    Chunked::Trailers(seen) => {
                        let room = TRAILER_BYTES_MAX.saturating_sub(seen);
                        let Some(line) = take_line(buf, room)? else {
                            return Ok(None);
                        };
                        *state = if line.is_empty() {
                            Chunked::Done
                        } else {
                            Chunked::Trailers(seen + line.len() + 2)
                        };
                    }
                }
            },
        }
    }
}

/// Takes one CRLF-ended line off `buf` (without its CRLF); `Ok(None)` when no line end has
/// come yet within `max` bytes.
fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, BodyError> {
    let window = &buf[..buf.len().min(max + 2)];
    match window.iter().position(|b| *b == b'\n') {
        Some(i) if i == 0 || buf[i - 1] != b'\r' => {
            Err(BodyError("a line of the chunked body ends in LF alone"))
        }
        Some(i) => {
            let mut line = buf.split_to(i + 1);
            line.truncate(i - 1);
            Ok(Some(line))
        }
        None if buf.len() >= max + 2 => Err(BodyError("a chunk-size or trailer line is too long")),
        None => Ok(None),
    }
}

/// The size of a chunk-size line (`1a`, `1a;ext=v`).
fn chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    let bad = BodyError("a chunk size is not a hexadecimal number");
    let digits = line
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii_end();
    if digits.is_empty() || digits.len() > 15 {
        return Err(bad);
    }
    digits.iter().try_fold(0u64, |n, d| {
        let v = (*d as char).to_digit(16).ok_or(bad)?;
        Ok(n * 16 + u64::from(v))
    })
}

/// The connection's side of a fed body: reads and decodes when the handler wants more.
pub struct Feeder {
    feed: Arc<Mutex<Feed>>,
    decoder: Decoder,
    /// `100 Continue` still to be sent before the first read (bytes of it written so far).
    send_continue: Option<usize>,
}

/// How a fed body ended, for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fed {
    /// Read to its end: the next request's bytes follow.
    Whole,
    /// Broken or abandoned: the connection cannot find the next request.
    Unfinished,
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl Feeder {
    /// A fed body and its feeder.
    pub fn new(decoder: Decoder, expect_continue: bool) -> (Incoming, Feeder) {
        let feed = Arc::new(Mutex::new(Feed::default()));
        let feeder = Feeder {
            feed: feed.clone(),
            decoder,
            send_continue: expect_continue.then_some(0),
        };
        (Incoming(Kind::Fed(feed)), feeder)
    }

    /// Feeds the body as far as it is wanted and the socket allows; `Ready` once it needs no
    /// more feeding (read to its end, broken, or dropped by the handler).
    pub fn poll_feed<S>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
        buf: &mut BytesMut,
    ) -> Poll<Fed>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            {
                let mut f = lock(&self.feed);
                if f.dropped {
                    return Poll::Ready(Fed::Unfinished);
                }
                if f.failed.is_some() {
                    return Poll::Ready(Fed::Unfinished);
                }
                if f.ended {
                    return Poll::Ready(Fed::Whole);
                }
                if f.piece.is_some() || !f.wanted {
                    store(&mut f.feeder, cx);
                    return Poll::Pending;
                }
            }
            if let Some(sent) = &mut self.send_continue {
                while *sent < CONTINUE.len() {
                    match Pin::new(&mut *io).poll_write(cx, &CONTINUE[*sent..]) {
                        Poll::Ready(Ok(n)) if n > 0 => *sent += n,
                        Poll::Ready(_) => return self.fail(BodyError("the client went away")),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                if Pin::new(&mut *io).poll_flush(cx).is_pending() {
                    return Poll::Pending;
                }
                self.send_continue = None;
            }
            match self.decoder.decode(buf) {
                Ok(Some(Piece::Data(piece))) => {
                    let mut f = lock(&self.feed);
                    f.piece = Some(piece);
                    f.wanted = false;
                    if let Some(w) = &f.reader {
                        w.wake_by_ref();
                    }
                }
                Ok(Some(Piece::End)) => {
                    let mut f = lock(&self.feed);
                    f.ended = true;
                    if let Some(w) = &f.reader {
                        w.wake_by_ref();
                    }
                    return Poll::Ready(Fed::Whole);
                }
                Ok(None) => match poll_read(cx, io, buf) {
                    Poll::Ready(Ok(0)) => {
                        return self.fail(BodyError("the connection closed before the body ended"))
                    }
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(_)) => return self.fail(BodyError("the client went away")),
                    Poll::Pending => return Poll::Pending,
                },
                Err(e) => return self.fail(e),
            }
        }
    }

    /// What of a `100 Continue` a full socket cut short (to be written before the answer).
    pub fn unsent_continue(&self) -> &'static [u8] {
        match self.send_continue {
            Some(sent) if sent > 0 => &CONTINUE[sent.min(CONTINUE.len())..],
            _ => &[],
        }
    }

    /// After the handler answered: whether the rest of the body is already in `buf` (taken
    /// off it then), so the connection can go on to the next request.
    pub fn drain_buffered(&mut self, buf: &mut BytesMut) -> Fed {
        if lock(&self.feed).failed.is_some() {
            return Fed::Unfinished;
        }
        // Bounded: each step takes bytes off `buf` or ends.
        loop {
            match self.decoder.decode(buf) {
                Ok(Some(Piece::Data(_))) => {}
                Ok(Some(Piece::End)) => return Fed::Whole,
                Ok(None) | Err(_) => return Fed::Unfinished,
            }
        }
    }

    fn fail(&mut self, e: BodyError) -> Poll<Fed> {
        let mut f = lock(&self.feed);
        f.failed = Some(e);
        if let Some(w) = &f.reader {
            w.wake_by_ref();
        }
        Poll::Ready(Fed::Unfinished)
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        // A body that outlives its request (moved into a task of its own) must not wait for a
        // connection that no longer feeds it.
        let mut f = lock(&self.feed);
        if !f.ended && f.failed.is_none() {
            f.failed = Some(BodyError("the request ended before its body was read"));
            if let Some(w) = &f.reader {
                w.wake_by_ref();
            }
        }
    }
}

/// Reads what the socket has into `buf` (room made first).
pub fn poll_read<S: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    io: &mut S,
    buf: &mut BytesMut,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_BYTES / 8 {
        buf.reserve(READ_BYTES);
    }
    let dst = buf.spare_capacity_mut();
    let mut rb = tokio::io::ReadBuf::uninit(dst);
    match Pin::new(io).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) => {
            let n = rb.filled().len();
            // SAFETY: `poll_read` initialised the first `n` bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n) };
            Poll::Ready(Ok(n))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(d: &mut Decoder, wire: &[u8]) -> Result<(Vec<u8>, usize), BodyError> {
        let mut buf = BytesMut::from(wire);
        let mut out = Vec::new();
        loop {
            match d.decode(&mut buf)? {
                Some(Piece::Data(b)) => out.extend_from_slice(&b),
                Some(Piece::End) => return Ok((out, buf.len())),
                None => return Err(BodyError("incomplete")),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_and_leave_what_follows() {
        let mut d = Decoder::Chunked(Chunked::Size(0));
        let wire = b"3\r\nabc\r\nA;ext=1\r\n0123456789\r\n0\r\nx-t: 1\r\n\r\nGET /";
        let (body, left) = decode_all(&mut d, wire).unwrap();
        assert_eq!(body, b"abc0123456789");
        assert_eq!(left, 5);
    }

    #[test]
    fn chunked_bodies_arrive_a_byte_at_a_time() {
        let wire = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let mut d = Decoder::Chunked(Chunked::Size(0));
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut ended = false;
        for b in wire {
            buf.extend_from_slice(&[*b]);
            while let Some(p) = d.decode(&mut buf).unwrap() {
                match p {
                    Piece::Data(x) => out.extend_from_slice(&x),
                    Piece::End => {
                        ended = true;
                        break;
                    }
                }
            }
        }
        assert!(ended);
        assert_eq!(out, b"abcde");
    }

    #[test]
    fn broken_chunked_bodies_are_errors() {
        for wire in [
            &b"x\r\n"[..],
            b"3\r\nabcX\r\n",
            b"3\nabc\r\n",
            b"ffffffffffffffff\r\n",
            b"-1\r\n",
        ] {
            let mut d = Decoder::Chunked(Chunked::Size(0));
            assert!(
                decode_all(&mut d, wire).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let mut long = vec![b'1'; CHUNK_LINE_BYTES_MAX + 10];
        long.extend_from_slice(b"\r\n");
        let mut d = Decoder::Chunked(Chunked::Size(0));
        assert_eq!(
            d.decode(&mut BytesMut::from(&long[..])),
            Err(BodyError("a chunk-size or trailer line is too long"))
        );
    }

    #[test]
    fn chunk_extensions_are_bounded_in_all() {
        let mut wire = Vec::new();
        let ext = "x".repeat(1000);
        for _ in 0..20 {
            wire.extend_from_slice(format!("1;{ext}\r\na\r\n").as_bytes());
        }
        let mut d = Decoder::Chunked(Chunked::Size(0));
        assert_eq!(
            decode_all(&mut d, &wire),
            Err(BodyError(
                "the chunked body's chunk extensions are too long"
            ))
        );
    }

    #[test]
    fn a_length_body_stops_at_its_length() {
        let mut d = Decoder::Length(3);
        let (body, left) = decode_all(&mut d, b"abcdef").unwrap();
        assert_eq!((body.as_slice(), left), (&b"abc"[..], 3));
    }
}
