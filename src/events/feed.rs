//! How event-stream operations read in the change feed ([`crate::engine::feed`]).
//!
//! - an append: one `appended` change per event (stream, id, ts, type, data), after a
//!   `created` for a stream the append made;
//! - `PUT /v1/streams/{s}`: `created` or `changed` (bucket width, retention);
//! - retention, `DELETE …/events?before=` and each step of deleting a stream: one `dropped`
//!   change naming the range — every event of the stream with `ts < before_ms` is gone, exactly
//!   what that commit removed — and its `cause` (`retention`, `trim`, `delete`), not one per
//!   event;
//! - deleting a stream: `deleted`, once its last bucket is gone.

use super::model::{self, Event, EV_STREAMS};
use crate::engine::feed::note::{Note, NoteBuf};
use crate::engine::feed::{json_field, Change, FeedSpec};
use crate::engine::redo::Op;
use crate::engine::writer::{ApplyCtx, NoteMark};
use redb::TableHandle;

/// The events domain in the feed.
pub const FEED: FeedSpec = FeedSpec { domain: 3, decode };

pub const APPEND: u8 = 1;
pub const CONFIGURE: u8 = 2;
pub const TRIM: u8 = 3;
pub const DROP_STREAM: u8 = 4;

/// An append (`created`: the stream did not exist) or a configure of `stream`.
pub fn note(ctx: &mut ApplyCtx<'_, '_>, verb: u8, stream: &str, created: bool) {
    ctx.note(
        NoteBuf::new(FEED.domain, verb)
            .str(stream)
            .u8(created as u8)
            .bytes(),
    );
}

/// Why events were dropped.
pub const BY_RETENTION: u8 = 0;
pub const BY_TRIM: u8 = 1;
pub const BY_DELETE: u8 = 2;

/// A removal of `stream`'s oldest events (a trim, or a step of deleting the stream): the note
/// goes first, and [`Dropped::done`] writes into it how far the commit got.
pub struct Dropped {
    mark: NoteMark,
    offset: usize,
}

impl Dropped {
    pub fn note(ctx: &mut ApplyCtx<'_, '_>, verb: u8, stream: &str, cause: u8) -> Dropped {
        let buf = NoteBuf::new(FEED.domain, verb).str(stream);
        let offset = buf.bytes().len();
        let mark = ctx.note(buf.u64(0).u8(cause).bytes());
        Dropped { mark, offset }
    }

    /// Every event with `ts < before_ms` is gone after this commit.
    pub fn done(self, ctx: &mut ApplyCtx<'_, '_>, before_ms: u64) {
        ctx.patch_note(self.mark, self.offset, &before_ms.to_le_bytes());
    }
}

fn stream_config(change: Change, value: &[u8]) -> Change {
    match model::decode_meta(value) {
        Ok(m) => change
            .with("bucket_ms", m.bucket_ms)
            .with("retention_ms", m.retention_ms),
        Err(e) => change.with("error", e),
    }
}

fn decode(note: &Note<'_>, ops: &[Op<'_>], out: &mut Vec<Change>) {
    let mut args = note.args();
    let stream = args.str().unwrap_or_default().to_string();
    match note.verb {
        APPEND | CONFIGURE => {
            let created = args.u8() == Some(1);
            let meta = ops.iter().find_map(|op| match op {
                Op::Put { name, value, .. } if *name == EV_STREAMS.name() => Some(*value),
                _ => None,
            });
            if let Some(meta) = meta {
                if created || note.verb == CONFIGURE {
                    let op = if created { "created" } else { "changed" };
                    out.push(stream_config(Change::new("events", op, &stream), meta));
                }
            }
            if note.verb == APPEND {
                for op in ops {
                    if let Op::Put {
                        name, key, value, ..
                    } = op
                    {
                        if let Some(change) = appended(&stream, name, key, value) {
                            out.push(change);
                        }
                    }
                }
            }
        }
        TRIM | DROP_STREAM => {
            let before_ms = args.u64().unwrap_or(0);
            let cause = match args.u8() {
                Some(BY_TRIM) => "trim",
                Some(BY_DELETE) => "delete",
                _ => "retention",
            };
            let removed = ops.iter().any(|op| {
                matches!(op, Op::Drop { .. })
                    || matches!(op, Op::Del { name, .. } if name.starts_with("ev/"))
            });
            let gone = ops
                .iter()
                .any(|op| matches!(op, Op::Del { name, .. } if *name == EV_STREAMS.name()));
            if gone {
                out.push(Change::new("events", "deleted", &stream));
            } else if removed {
                out.push(
                    Change::new("events", "dropped", &stream)
                        .with("before_ms", before_ms)
                        .with("cause", cause),
                );
            }
        }
        _ => {}
    }
}

/// The event a PUT into one of `stream`'s bucket tables (`ev/<stream>/<start>`) stores.
fn appended(stream: &str, table: &str, key: &[u8], value: &[u8]) -> Option<Change> {
    let rest = table.strip_prefix("ev/")?.strip_prefix(stream)?;
    if !rest.starts_with('/') {
        return None;
    }
    let ts = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    let seq = u32::from_be_bytes(key.get(8..12)?.try_into().ok()?);
    let change = Change::new("events", "appended", stream)
        .with("id", format!("{ts}-{seq}"))
        .with("ts", ts);
    Some(match model::decode::<Event>(value) {
        Ok(e) => json_field(change.with("type", e.kind), "data", &e.data),
        Err(e) => change.with("error", e),
    })
}
