//! A request head: parsed by httparse (the parser hyper uses) out of the connection's buffer
//! into `http` types, with the framing of the body that follows (RFC 9112 §6).
//!
//! A head that cannot be read one way only is refused with the connection: bare LF line ends
//! (a proxy in front may see other header boundaries), differing `Content-Length`s, a
//! `Transfer-Encoding` whose last coding is not chunked, or one on HTTP/1.0. Those are the
//! framings two readers could disagree on (request smuggling).

use crate::http::error::ApiError;
use bytes::BytesMut;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Uri, Version};
use std::mem::MaybeUninit;

/// Headers one request may carry (hyper's default too).
pub const HEADERS_MAX: usize = 100;
const _: () = assert!(HEADERS_MAX <= 128, "a u128 marks which headers are Host");

/// The longest request target served (hyper's bound: `Uri` refuses longer).
const URI_BYTES_MAX: usize = (u16::MAX - 1) as usize;

/// How the body after a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head.
pub struct Head {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The client may send another request on this connection after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for `100 Continue` before sending the body.
    pub expect_continue: bool,
    /// What the head asks that shardbox does not do, answered like any handler's error (the
    /// connection stays open when the body can be skipped): a missing or repeated `Host`, a
    /// transfer coding other than chunked, an `Expect` other than `100-continue`, a content
    /// coding on a body.
    pub refused: Option<ApiError>,
}

/// A head refused before any handler sees it: answered with this status and JSON error, and
/// the connection closed (its bytes cannot be trusted to frame a next request).
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: &'static str,
}

impl Refusal {
    fn malformed(message: &'static str) -> Refusal {
        Refusal {
            status: 400,
            code: "bad_request",
            message,
        }
    }

    /// The head is larger than `header_bytes_max`.
    pub fn too_large(request_line_done: bool) -> Refusal {
        if request_line_done {
            Refusal {
                status: 431,
                code: "request_header_fields_too_large",
                message: "the request head is larger than header_bytes_max: send fewer or smaller headers",
            }
        } else {
            Refusal {
                status: 414,
                code: "uri_too_long",
                message:
                    "the request line is longer than header_bytes_max: shorten the path and query",
            }
        }
    }

    /// The head did not arrive within `header_read_timeout_ms`.
    pub fn timed_out() -> Refusal {
        Refusal {
            status: 408,
            code: "request_timeout",
            message: "the request head did not arrive within header_read_timeout_ms",
        }
    }
}

/// Parses the head at the start of `buf`: `Ok(None)` while it is incomplete (and within
/// `head_bytes_max`), else the head (its bytes taken off `buf`) or why it is refused.
pub fn parse(buf: &mut BytesMut, head_bytes_max: usize) -> Result<Option<Head>, Refusal> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut []);
    let status = httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, &mut slots);
    let len = match status {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= head_bytes_max => {
            return Err(Refusal::too_large(buf.contains(&b'\n')))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::too_large(true)),
        // `HTTP/2.0` is a version not served; `REQUEST` is no version at all.
        Err(httparse::Error::Version) if names_http_version(buf) => {
            return Err(Refusal {
                status: 505,
                code: "http_version_not_supported",
                message: "only HTTP/1.1 (and 1.0) are served",
            })
        }
        Err(_) => {
            return Err(Refusal::malformed(
                "malformed HTTP/1.1 request: check the request line and the header syntax",
            ))
        }
    };
    if len > head_bytes_max {
        return Err(Refusal::too_large(true));
    }
    if has_bare_lf(&buf[..len]) {
        return Err(Refusal::malformed(
            "a line of the request head ends in LF alone: end every line with CRLF",
        ));
    }
    // Offsets into the head, kept while `req` borrows `buf`.
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| Refusal::malformed("the request method is not a token"))?;
    let path = at(req.path.unwrap_or("").as_bytes());
    if path.1 > URI_BYTES_MAX {
        return Err(Refusal::too_large(false));
    }
    let version = if req.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    // Where each header's name and value lie (left uninitialised past `count`: zeroing the
    // whole array on every request costs more than the parse).
    let mut spans = [const { MaybeUninit::<[usize; 4]>::uninit() }; HEADERS_MAX];
    let count = req.headers.len();
    // `Host` is checked (exactly one on HTTP/1.1) and not kept: no handler reads it, and a
    // request whose only header it is then needs no header map at all. Bit i: header i is one.
    let mut host_at = 0u128;
    for (i, (span, h)) in spans.iter_mut().zip(req.headers.iter()).enumerate() {
        let (n, nl) = at(h.name.as_bytes());
        let (v, vl) = at(h.value);
        span.write([n, nl, v, vl]);
        if h.name.eq_ignore_ascii_case("host") {
            host_at |= 1 << i;
        }
    }
    let hosts = host_at.count_ones() as usize;
    let bytes = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(bytes.slice(path.0..path.0 + path.1))
        .map_err(|_| Refusal::malformed("the request target is not a valid URI"))?;
    let mut head = Head {
        method,
        uri,
        version,
        headers: HeaderMap::with_capacity(count - hosts),
        framing: Framing::Empty,
        keep_alive: version == Version::HTTP_11,
        expect_continue: false,
        refused: None,
    };
    let mut framing = Frame {
        hosts,
        ..Frame::default()
    };
    for (i, span) in spans[..count].iter().enumerate() {
        if host_at & (1 << i) != 0 {
            continue; // httparse has refused any control character in its value
        }
        // SAFETY: the first `count` spans were written above.
        let [n, nl, v, vl] = unsafe { span.assume_init() };
        let name = HeaderName::from_bytes(&bytes[n..n + nl])
            .map_err(|_| Refusal::malformed("a header name is not a token"))?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(v..v + vl))
            .map_err(|_| Refusal::malformed("a header value holds a control character"))?;
        if !framing.note(&name, &value, &mut head)? {
            continue;
        }
        head.headers.append(name, value);
    }
    head.framing = framing.finish(&mut head)?;
    Ok(Some(head))
}

/// What the framing headers said so far.
#[derive(Default)]
struct Frame {
    length: Option<u64>,
    saw_length: bool,
    transfer_encoding: bool,
    chunked: bool,
    close: bool,
    hosts: usize,
    /// `chunked` codings in every `Transfer-Encoding` line.
    chunked_codings: usize,
    /// The first `Transfer-Encoding` line naming another coding.
    other_coding: Option<String>,
    /// An `Expect` other than `100-continue`.
    other_expectation: bool,
    /// The first `Content-Encoding` other than `identity`.
    content_coding: Option<String>,
}

impl Frame {
    /// Notes a framing or connection header; false for a header not kept (a repeated equal
    /// `Content-Length`, folded into one as RFC 9110 §8.6 allows).
    fn note(
        &mut self,
        name: &HeaderName,
        value: &HeaderValue,
        head: &mut Head,
    ) -> Result<bool, Refusal> {
        if *name == header::CONTENT_LENGTH {
            self.saw_length = true;
            if self.transfer_encoding {
                return Ok(true);
            }
            let len = content_length(value.as_bytes())
                .ok_or_else(|| Refusal::malformed("Content-Length is not a whole number"))?;
            match self.length {
                Some(prev) if prev != len => {
                    return Err(Refusal::malformed(
                        "Content-Length is given twice with different values: send it once",
                    ))
                }
                Some(_) => return Ok(false),
                None => self.length = Some(len),
            }
        } else if *name == header::TRANSFER_ENCODING {
            if head.version == Version::HTTP_10 {
                return Err(Refusal::malformed(
                    "HTTP/1.0 has no Transfer-Encoding: send Content-Length",
                ));
            }
            self.transfer_encoding = true;
            // The last coding of the last line decides (RFC 9112 §6.3).
            let is_chunked = |c: &[u8]| c.trim_ascii().eq_ignore_ascii_case(b"chunked");
            self.chunked = value
                .as_bytes()
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(is_chunked);
            for c in value.as_bytes().split(|b| *b == b',') {
                if is_chunked(c) {
                    self.chunked_codings += 1;
                } else if self.other_coding.is_none() {
                    self.other_coding =
                        Some(String::from_utf8_lossy(value.as_bytes()).into_owned());
                }
            }
        } else if *name == header::CONNECTION {
            for token in value.as_bytes().split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    head.keep_alive = true;
                }
            }
        } else if *name == header::EXPECT {
            // An HTTP/1.0 client does not wait for 100 Continue: it is ignored there (RFC 9110
            // §10.1.1).
            let cont = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
            head.expect_continue = cont && head.version == Version::HTTP_11;
            self.other_expectation |= !cont;
        } else if *name == header::CONTENT_ENCODING
            && self.content_coding.is_none()
            && !value
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"identity")
        {
            self.content_coding = Some(String::from_utf8_lossy(value.as_bytes()).into_owned());
        }
        Ok(true)
    }

    /// What hyper used to leave to the application (RFC 9112 §3.2, §6.1; RFC 9110 §8.4):
    /// exactly one `Host` on HTTP/1.1, no transfer coding but `chunked` (once), only
    /// `Expect: 100-continue`, no content coding on a request body (a stored value would be
    /// the compressed bytes).
    fn refusal(&self, head: &Head) -> Option<ApiError> {
        if self.hosts > 1 || (self.hosts == 0 && head.version == Version::HTTP_11) {
            return Some(ApiError::bad_request(format!(
                "an HTTP/1.1 request needs exactly one Host header, got {}",
                self.hosts
            )));
        }
        if let Some(te) = &self.other_coding {
            return Some(ApiError::new(
                501,
                "not_implemented",
                format!("Transfer-Encoding `{te}`: only chunked is supported"),
            ));
        }
        if self.other_expectation {
            return Some(ApiError::new(
                417,
                "expectation_failed",
                "only `Expect: 100-continue` is supported",
            ));
        }
        let has_body = self.transfer_encoding || self.length.is_some_and(|n| n > 0);
        match &self.content_coding {
            Some(ce) if has_body => Some(ApiError::new(
                415,
                "unsupported_media_type",
                format!("Content-Encoding `{ce}` is not supported; send the body uncompressed"),
            )),
            _ => None,
        }
    }

    fn finish(self, head: &mut Head) -> Result<Framing, Refusal> {
        head.refused = self.refusal(head);
        if self.close {
            head.keep_alive = false;
        }
        if self.transfer_encoding {
            if !self.chunked {
                return Err(Refusal::malformed(
                    "Transfer-Encoding must end in chunked on a request",
                ));
            }
            // Readers in front disagree on a body chunked twice: refused with the connection.
            if self.chunked_codings > 1 {
                return Err(Refusal::malformed(
                    "Transfer-Encoding names chunked more than once: send it once",
                ));
            }
            // Both given: chunked frames the body, and the connection ends after it (a reader
            // in front may have used the length).
            if self.saw_length {
                head.headers.remove(header::CONTENT_LENGTH);
                head.keep_alive = false;
            }
            return Ok(Framing::Chunked);
        }
        Ok(match self.length {
            None | Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
        })
    }
}

/// A `Content-Length` value: digits only (no sign, no spaces inside), at most 19 of them.
fn content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Whether the request line's last word looks like an HTTP version (`HTTP/…`).
fn names_http_version(buf: &[u8]) -> bool {
    let line = buf
        .split(|b| *b == b'\r' || *b == b'\n')
        .next()
        .unwrap_or_default();
    line.rsplit(|b| *b == b' ')
        .next()
        .is_some_and(|v| v.starts_with(b"HTTP/"))
}

/// Whether a line of `head` ends in LF without CR before it.
fn has_bare_lf(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r')
}

/// The bytes of a head as a `Bytes` (for tests).
#[cfg(test)]
fn parse_str(s: &str) -> Result<Option<Head>, Refusal> {
    let mut b = BytesMut::from(s.as_bytes());
    parse(&mut b, 16 << 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_get() {
        let h = parse_str("GET /v1/kv/a/b?x=1 HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.method, Method::GET);
        assert_eq!(h.uri.path(), "/v1/kv/a/b");
        assert_eq!(h.uri.query(), Some("x=1"));
        // Host is checked and not kept.
        assert_eq!(h.headers.get("host"), None);
        assert!(h.refused.is_none());
        assert_eq!(h.headers.get("x-a").unwrap(), "1");
        let h = parse_str("GET / HTTP/1.1\r\nhost: t\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.headers.is_empty() && h.refused.is_none());
        for two in ["Host: a\r\nHOST: b", "X-A: 1"] {
            let text = format!("GET / HTTP/1.1\r\n{two}\r\n\r\n");
            let h = parse_str(&text).unwrap().unwrap();
            assert_eq!(h.refused.map(|e| e.status), Some(400), "{two}");
        }
        assert_eq!(h.framing, Framing::Empty);
        assert!(h.keep_alive);
    }

    #[test]
    fn framing() {
        let f = |s: &str| parse_str(s).map(|h| h.map(|h| (h.framing, h.keep_alive)));
        assert_eq!(
            f("PUT / HTTP/1.1\r\ncontent-length: 5\r\n\r\n"),
            Ok(Some((Framing::Length(5), true)))
        );
        assert_eq!(
            f("PUT / HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n"),
            Ok(Some((Framing::Length(5), true)))
        );
        assert_eq!(
            f("PUT / HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            f("PUT / HTTP/1.1\r\ncontent-length: +5\r\n\r\n")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            f("PUT / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            Ok(Some((Framing::Chunked, true)))
        );
        assert_eq!(
            f("PUT / HTTP/1.1\r\ntransfer-encoding: chunked, gzip\r\n\r\n")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            f("PUT / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"),
            Ok(Some((Framing::Chunked, false)))
        );
        assert_eq!(
            f("PUT / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            f("GET / HTTP/1.0\r\n\r\n"),
            Ok(Some((Framing::Empty, false)))
        );
        assert_eq!(
            f("GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n"),
            Ok(Some((Framing::Empty, true)))
        );
        assert_eq!(
            f("GET / HTTP/1.1\r\nconnection: keep-alive, close\r\n\r\n"),
            Ok(Some((Framing::Empty, false)))
        );
    }

    #[test]
    fn refusals() {
        let status = |s: &str| parse_str(s).err().map(|r| r.status);
        assert_eq!(status("GET / HTTP/1.1\nhost: t\n\n"), Some(400));
        assert_eq!(status("GET / HTTP/1.1\r\nhost: t\n\r\n"), Some(400));
        assert_eq!(status("GET / HTTP/1.1\r\nno colon\r\n\r\n"), Some(400));
        assert_eq!(status("GET / HTTP/2.0\r\n\r\n"), Some(505));
        assert_eq!(status("NOT A REQUEST\r\n\r\n"), Some(400));
        assert!(parse_str("GET / HTTP/1.1\r\nhost: t\r\n")
            .unwrap()
            .is_none());
        let mut big = BytesMut::from(&b"GET / HTTP/1.1\r\nx: "[..]);
        big.extend_from_slice(&[b'a'; 9000]);
        assert_eq!(parse(&mut big, 8192).err().map(|r| r.status), Some(431));
        let mut long = BytesMut::from(&b"GET /"[..]);
        long.extend_from_slice(&[b'a'; 9000]);
        assert_eq!(parse(&mut long, 8192).err().map(|r| r.status), Some(414));
    }
}
