//! Response builders. Every error leaves through [`error`], which renders the one JSON shape.

use crate::http::error::ApiError;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use std::convert::Infallible;

/// A response body: whole (most answers: no allocation, no dynamic call), or a stream
/// (NDJSON, Server-Sent Events).
pub enum Body {
    /// The bytes, until they are taken.
    Whole(Option<Bytes>),
    Stream(BoxBody<Bytes, Infallible>),
}

pub type Resp = Response<Body>;

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Whole(b) => {
                std::task::Poll::Ready(b.take().map(|b| Ok(hyper::body::Frame::data(b))))
            }
            Body::Stream(s) => std::pin::Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Whole(b) => b.is_none(),
            Body::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Body::Whole(b) => hyper::body::SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Stream(s) => s.size_hint(),
        }
    }
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Body::Whole(Some(bytes.into()))
}

pub fn empty_body() -> Body {
    Body::Whole(None)
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A JSON response.
pub fn json(code: u16, value: &serde_json::Value) -> Resp {
    // Written into room for the line end: no second allocation to add it.
    let mut body = Vec::with_capacity(128);
    let _ = serde_json::to_writer(&mut body, value); // a Value always serialises
    body.push(b'\n');
    let mut r = Response::new(full(body));
    *r.status_mut() = status(code);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A JSON response from a body already written (its line end added here).
pub fn json_bytes(code: u16, mut body: Vec<u8>) -> Resp {
    body.push(b'\n');
    let mut r = Response::new(full(body));
    *r.status_mut() = status(code);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A JSON response serialised straight from a typed reply (no intermediate `serde_json::Value`,
/// so stored JSON embedded as `RawValue` is written as is, never re-parsed).
pub fn json_of<T: serde::Serialize + ?Sized>(code: u16, value: &T) -> Resp {
    let mut body = Vec::with_capacity(256);
    match serde_json::to_writer(&mut body, value) {
        Ok(()) => {
            body.push(b'\n');
            let mut r = Response::new(full(body));
            *r.status_mut() = status(code);
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Err(e) => error(&ApiError::new(
            500,
            "internal",
            format!("cannot render the reply: {e}"),
        )),
    }
}

/// A 200 response carrying a stored value with its content type (default
/// `application/octet-stream`).
pub fn value(bytes: impl Into<Bytes>, content_type: Option<&str>) -> Resp {
    let mut r = Response::new(full(bytes));
    let ct = content_type
        .and_then(|c| HeaderValue::from_str(c).ok())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    r.headers_mut().insert(CONTENT_TYPE, ct);
    r
}

/// A response with no body.
pub fn empty(code: u16) -> Resp {
    let mut r = Response::new(empty_body());
    *r.status_mut() = status(code);
    r
}

/// The JSON error response, with `Retry-After` when the error says when to come back.
pub fn error(e: &ApiError) -> Resp {
    let mut body = e.body();
    body.push('\n');
    let mut r = Response::new(full(body));
    *r.status_mut() = status(e.status);
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(s) = e.retry_after_s {
        h.insert(RETRY_AFTER, HeaderValue::from(s));
    }
    if let Some(allow) = e
        .allow
        .as_deref()
        .and_then(|a| HeaderValue::from_str(a).ok())
    {
        h.insert(hyper::header::ALLOW, allow);
    }
    r
}

/// A body fed from a channel: streamed responses (NDJSON, Server-Sent Events). The sender is
/// bounded, so a slow client slows the producer instead of growing memory.
pub struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// A streamed response and the sender that feeds it (capacity in chunks).
pub fn channel(
    code: u16,
    content_type: &'static str,
    capacity: usize,
) -> (Resp, tokio::sync::mpsc::Sender<Bytes>) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity);
    let mut r = Response::new(Body::Stream(ChannelBody { rx }.boxed()));
    *r.status_mut() = status(code);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    (r, tx)
}

/// Makes a HEAD response from a GET one: same headers, no body, but the length it would have.
pub fn head_of(resp: Resp, len: usize) -> Resp {
    let (mut parts, _) = resp.into_parts();
    parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    Response::from_parts(parts, empty_body())
}
