//! Response heads and body framing, written into the connection's output buffer.

use hyper::header::{HeaderMap, CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::{StatusCode, Version};
use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

/// How the body after a response head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// No body may follow (1xx, 204, 304), or a HEAD response: only the headers' own
    /// `Content-Length`, if any, is written.
    None,
    /// Exactly this many bytes follow.
    Known(u64),
    /// A stream: chunked on HTTP/1.1, ended by closing on HTTP/1.0.
    Stream,
}

/// Whether a response with this status may carry a body (RFC 9110 §6.4.1).
pub fn may_have_body(status: StatusCode) -> bool {
    !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// Writes a response head, with `x-request-id: <request_id>` and `shardbox-position:
/// <generation>:<lsn>` (what the answer reflects). `keep_alive` false adds `connection: close`
/// (HTTP/1.1); true on HTTP/1.0 adds `connection: keep-alive`.
#[allow(clippy::too_many_arguments)]
pub fn head(
    out: &mut Vec<u8>,
    version: Version,
    status: StatusCode,
    headers: &HeaderMap,
    length: Length,
    keep_alive: bool,
    request_id: &[u8],
    position: Option<(u64, u64)>,
) {
    out.extend_from_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        // The framing is the connection's to write.
        if (name == CONTENT_LENGTH && length != Length::None)
            || name == TRANSFER_ENCODING
            || name.as_str() == "x-request-id"
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match length {
        Length::None => {}
        Length::Known(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Length::Stream if version == Version::HTTP_11 => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        Length::Stream => {}
    }
    match (version == Version::HTTP_11, keep_alive) {
        (true, false) => out.extend_from_slice(b"connection: close\r\n"),
        (false, true) => out.extend_from_slice(b"connection: keep-alive\r\n"),
        _ => {}
    }
    out.extend_from_slice(b"x-request-id: ");
    out.extend_from_slice(request_id);
    if let Some((generation, lsn)) = position {
        position_header(out, generation, lsn);
    }
    out.extend_from_slice(b"\r\ndate: ");
    date(out);
    out.extend_from_slice(b"\r\n\r\n");
}

const POSITION_NAME: &[u8] = b"\r\nshardbox-position: ";
/// The header's name, the generation's 16 hex digits and the `:`.
const POSITION_PREFIX_LEN: usize = POSITION_NAME.len() + 17;

thread_local! {
    /// The `shardbox-position` header up to the LSN (name, generation in hex, `:`), for the
    /// generation it was made for: a generation changes only at a promotion.
    static POSITION_PREFIX: std::cell::Cell<(u64, [u8; POSITION_PREFIX_LEN])> =
        const { std::cell::Cell::new((0, [0; POSITION_PREFIX_LEN])) };
}

/// Appends `\r\nshardbox-position: <generation, 16 hex digits>:<lsn>`.
fn position_header(out: &mut Vec<u8>, generation: u64, lsn: u64) {
    let (made_for, mut prefix) = POSITION_PREFIX.get();
    if made_for != generation || prefix[0] == 0 {
        prefix[..POSITION_NAME.len()].copy_from_slice(POSITION_NAME);
        let hex = &mut prefix[POSITION_NAME.len()..POSITION_NAME.len() + 16];
        for (i, b) in hex.iter_mut().enumerate() {
            *b = b"0123456789abcdef"[((generation >> (60 - 4 * i)) & 0xf) as usize];
        }
        prefix[POSITION_PREFIX_LEN - 1] = b':';
        POSITION_PREFIX.set((generation, prefix));
    }
    out.extend_from_slice(&prefix);
    out.extend_from_slice(itoa::Buffer::new().format(lsn).as_bytes());
}

/// Appends a chunk of a chunked body.
pub fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let mut hex = [0u8; 16];
    let mut i = hex.len();
    let mut n = data.len();
    loop {
        i -= 1;
        hex[i] = b"0123456789abcdef"[n % 16];
        n /= 16;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&hex[i..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

thread_local! {
    /// The `Date` value of the current second, made once a second per thread.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

/// Appends the current time as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                d.1.copy_from_slice(text.as_bytes());
                d.0 = secs;
            }
        }
        out.extend_from_slice(&d.1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderValue, CONTENT_TYPE};

    /// The head written for a `text/plain` 200 with these framing choices.
    fn head_text(version: Version, length: Length, keep_alive: bool, id: &[u8]) -> String {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let mut out = Vec::new();
        head(
            &mut out,
            version,
            StatusCode::OK,
            &h,
            length,
            keep_alive,
            id,
            Some((0xab, 42)),
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn heads() {
        let text = head_text(Version::HTTP_11, Length::Known(5), true, b"r1");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\nx-request-id: r1\r\nshardbox-position: 00000000000000ab:42\r\ndate: "), "{text}");
        assert!(text.ends_with(" GMT\r\n\r\n"), "{text}");
        let text = head_text(Version::HTTP_10, Length::Stream, false, b"r");
        assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
        assert!(
            !text.contains("chunked") && !text.contains("connection"),
            "{text}"
        );
        let text = head_text(Version::HTTP_11, Length::Stream, false, b"r");
        assert!(
            text.contains("transfer-encoding: chunked\r\nconnection: close\r\n"),
            "{text}"
        );
        let text = head_text(Version::HTTP_10, Length::Known(0), true, b"r");
        assert!(text.contains("connection: keep-alive\r\n"), "{text}");
    }

    #[test]
    fn chunks() {
        let mut out = Vec::new();
        chunk(&mut out, &[b'x'; 26]);
        chunk(&mut out, b"");
        out.extend_from_slice(LAST_CHUNK);
        assert_eq!(&out[..4], b"1a\r\n");
        assert!(out.ends_with(b"x\r\n0\r\n\r\n"));
    }
}
