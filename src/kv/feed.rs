//! How KV operations read in the change feed ([`crate::engine::feed`]).
//!
//! Every operation notes its verb before it writes; a `kv` table PUT after it is a `put`
//! change (the key's new value, revision, content type and expiry), a DEL a `delete`. The
//! verb is the change's `cause`: `put`, `incr` and `batch` for puts; `delete`, `batch`,
//! `prefix` (`DELETE /v1/kv/{ns}?prefix=`) and `expired` (the TTL sweep) for deletes. The
//! expiry index (`kv_expiry`) is not a change of its own.

use super::KV;
use crate::engine::codec;
use crate::engine::feed::note::{Note, NoteBuf};
use crate::engine::feed::{bytes_field, Change, FeedSpec};
use crate::engine::redo::Op;
use crate::engine::writer::ApplyCtx;
use redb::TableHandle;

/// The KV domain in the feed.
pub const FEED: FeedSpec = FeedSpec { domain: 1, decode };

pub const PUT: u8 = 1;
pub const INCR: u8 = 2;
pub const BATCH: u8 = 3;
pub const DELETE: u8 = 4;
pub const PREFIX: u8 = 5;
pub const EXPIRED: u8 = 6;

/// Notes what the operation being applied is.
pub fn note(ctx: &mut ApplyCtx<'_, '_>, verb: u8) {
    ctx.note(NoteBuf::new(FEED.domain, verb).bytes());
}

fn cause(verb: u8) -> &'static str {
    match verb {
        PUT => "put",
        INCR => "incr",
        BATCH => "batch",
        DELETE => "delete",
        PREFIX => "prefix",
        EXPIRED => "expired",
        _ => "unknown",
    }
}

/// The namespace and key of a stored key (`ns ‖ 0 ‖ key`: a namespace holds no NUL, a key may).
fn split(sk: &[u8]) -> (String, String) {
    match sk.iter().position(|b| *b == 0) {
        Some(i) => (
            String::from_utf8_lossy(&sk[..i]).into_owned(),
            String::from_utf8_lossy(&sk[i + 1..]).into_owned(),
        ),
        None => (String::from_utf8_lossy(sk).into_owned(), String::new()),
    }
}

fn decode(note: &Note<'_>, ops: &[Op<'_>], out: &mut Vec<Change>) {
    let cause = cause(note.verb);
    for op in ops {
        match *op {
            Op::Put {
                name, key, value, ..
            } if name == KV.name() => {
                let (ns, k) = split(key);
                let change = Change::new("kv", "put", ns).with("key", k);
                let change = match codec::decode(value) {
                    Ok((h, payload)) => bytes_field(
                        change
                            .with("revision", h.revision)
                            .with("content_type", h.content_type)
                            .with("expires_at_ms", h.expires_at_ms),
                        "value",
                        payload,
                    ),
                    // The record was checked before it was logged; a damaged one is named.
                    Err(e) => change.with("error", e.to_string()),
                };
                out.push(change.with("cause", cause));
            }
            Op::Del { name, key, .. } if name == KV.name() => {
                let (ns, k) = split(key);
                out.push(
                    Change::new("kv", "delete", ns)
                        .with("key", k)
                        .with("cause", cause),
                );
            }
            _ => {}
        }
    }
}
