//! Reading request bodies within bounds: a per-request byte limit enforced while streaming, a
//! deadline for the whole body, and a process-wide budget of buffered body bytes so many large
//! uploads at once answer 503 instead of growing memory.

use crate::http::error::ApiError;
use bytes::{Bytes, BytesMut};
use hyper::header::CONTENT_LENGTH;
use hyper::HeaderMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a request waits for body budget before it is refused.
const BUDGET_WAIT: Duration = Duration::from_millis(500);

/// A body held in memory, with the budget it holds until dropped.
pub struct BodyBytes {
    pub bytes: Bytes,
    _permit: Option<OwnedSemaphorePermit>,
}

/// A request's body as a handler gets it: still on the connection, or already read by a layer
/// in front of the handler (idempotency keys hash the body before the handler runs). Either
/// way a handler reads it with [`read`], under the same bounds.
pub enum ReqBody {
    Stream(super::h1::Incoming),
    Buffered(BodyBytes),
}

/// Reads the whole body; 413 past `max_bytes`, 408 past `timeout`, 503 without budget.
pub async fn read(
    headers: &HeaderMap,
    body: ReqBody,
    max_bytes: usize,
    budget: &Arc<Semaphore>,
    timeout: Duration,
    what: &str,
) -> Result<BodyBytes, ApiError> {
    let body = match body {
        ReqBody::Stream(b) => b,
        ReqBody::Buffered(b) if b.bytes.len() > max_bytes => {
            return Err(too_large(what, b.bytes.len() as u64, max_bytes))
        }
        ReqBody::Buffered(b) => return Ok(b),
    };
    let declared = match headers.get(CONTENT_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Content-Length is not a number"))?,
        ),
        None => None,
    };
    if let Some(n) = declared {
        if n > max_bytes as u64 {
            return Err(too_large(what, n, max_bytes));
        }
    }
    let reserve = declared.unwrap_or(0) as u32;
    let mut permit = acquire(budget, reserve).await?;
    let collect = async {
        // A body that arrives as one frame is kept as that frame's `Bytes` (no copy); only a
        // body in several frames is gathered into one buffer.
        let mut first: Option<Bytes> = None;
        let mut buf = BytesMut::new();
        let mut body = body;
        while let Some(data) = body.chunk().await {
            let data = data.map_err(|e| ApiError::bad_request(format!("reading body: {e}")))?;
            {
                let have = buf.len() + first.as_ref().map_or(0, Bytes::len);
                let new_len = have + data.len();
                if new_len > max_bytes {
                    return Err(too_large(what, new_len as u64, max_bytes));
                }
                // Chunked bodies (no Content-Length) take budget as they arrive.
                let reserved = permit.as_ref().map_or(0, |p| p.num_permits());
                if new_len > reserved {
                    let more = acquire(budget, (new_len - reserved) as u32).await?;
                    match (&mut permit, more) {
                        (Some(p), Some(m)) => p.merge(m),
                        (slot @ None, m) => *slot = m,
                        _ => {}
                    }
                }
                match first.take() {
                    None if buf.is_empty() => first = Some(data),
                    Some(f) => {
                        buf.reserve(declared.unwrap_or(new_len as u64) as usize);
                        buf.extend_from_slice(&f);
                        buf.extend_from_slice(&data);
                    }
                    None => buf.extend_from_slice(&data),
                }
            }
        }
        Ok(match first {
            Some(f) => f,
            None => buf.freeze(),
        })
    };
    let bytes = tokio::time::timeout(timeout, collect).await.map_err(|_| {
        ApiError::new(
            408,
            "request_timeout",
            format!(
                "the request body did not arrive within {} ms",
                timeout.as_millis()
            ),
        )
    })??;
    Ok(BodyBytes {
        bytes,
        _permit: permit,
    })
}

async fn acquire(
    budget: &Arc<Semaphore>,
    n: u32,
) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
    if n == 0 {
        return Ok(None);
    }
    match tokio::time::timeout(BUDGET_WAIT, budget.clone().acquire_many_owned(n)).await {
        Ok(Ok(p)) => Ok(Some(p)),
        _ => {
            crate::base::metrics::BODY_BUDGET_REFUSED.inc();
            Err(ApiError::unavailable(
                "overloaded",
                "too many request bytes are buffered right now (inflight_body_bytes_max); retry",
            ))
        }
    }
}

fn too_large(what: &str, got: u64, max: usize) -> ApiError {
    ApiError::too_large(format!("{what} is {got} bytes; the limit is {max}"))
}
