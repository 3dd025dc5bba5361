//! Event mutations as the shard writer applies them (check first, then mutate: a rejection,
//! [`OpError::Rejected`], is only returned before the first write; [`OpError::Storage`] aborts
//! the batch).

use super::model::{self, *};
use crate::engine::{ApplyCtx, OpError};
use crate::events::EventError;
use crate::base::invalid::{Invalid, ItemKind};
use redb::{ReadableTable, TableDefinition};
use std::collections::BTreeMap;

pub type Res<T> = Result<T, OpError<EventError>>;

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Client timestamp (ms); `None` = the server's clock.
    pub ts: Option<u64>,
    pub kind: Option<String>,
    /// JSON text.
    pub data: Vec<u8>,
}

/// Defaults and guards the writer needs.
#[derive(Debug, Clone, Copy)]
pub struct AppendRules {
    pub bucket_ms: u64,
    pub retention_ms: u64,
    pub future_skew_max_ms: u64,
}

fn table(name: &str) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
    TableDefinition::new(name)
}

pub fn load_meta(ctx: &ApplyCtx<'_, '_>, stream: &str) -> Res<Option<StreamMeta>> {
    let t = ctx.table(EV_STREAMS)?;
    let got = t.get(stream.as_bytes())?;
    Ok(match got {
        None => None,
        Some(g) => Some(model::decode_meta(g.value()).map_err(EventError::Corrupt)?),
    })
}

fn save_meta(ctx: &ApplyCtx<'_, '_>, stream: &str, m: &StreamMeta) -> Result<(), redb::Error> {
    ctx.table(EV_STREAMS)?
        .insert(stream.as_bytes(), model::encode(m).as_slice())?;
    Ok(())
}

/// Appends events (creating the stream with the defaults if needed); all or nothing.
/// Returns their ids.
pub fn append(
    ctx: &mut ApplyCtx<'_, '_>,
    stream: &str,
    events: &[NewEvent],
    rules: AppendRules,
) -> Res<Vec<(u64, u32)>> {
    let now = ctx.now_ms;
    let existing = load_meta(ctx, stream)?;
    super::feed::note(ctx, super::feed::APPEND, stream, existing.is_none());
    let mut meta = existing.unwrap_or(StreamMeta {
        version: RECORD_VERSION,
        bucket_ms: rules.bucket_ms,
        retention_ms: rules.retention_ms,
        created_ms: now,
        last_ms: 0,
        last_seq: 0,
        events: 0,
        bytes: 0,
    });
    for (i, e) in events.iter().enumerate() {
        if let Some(ts) = e.ts {
            if ts > now.saturating_add(rules.future_skew_max_ms) {
                let e = Invalid::TsAhead {
                    ts,
                    skew_max_ms: rules.future_skew_max_ms,
                    now,
                };
                return Err(EventError::Invalid(e.at(ItemKind::Event, i)).into());
            }
            if meta.retention_ms > 0 && ts < now.saturating_sub(meta.retention_ms) {
                let e = Invalid::TsBeforeRetention { ts };
                return Err(EventError::Invalid(e.at(ItemKind::Event, i)).into());
            }
        }
    }
    let mut stats: BTreeMap<u64, BucketStats> = BTreeMap::new();
    let mut ids = Vec::with_capacity(events.len());
    for e in events {
        let (ts, seq) = match e.ts {
            Some(ts) if ts < meta.last_ms => (ts, next_seq_at(ctx, stream, meta.bucket_ms, ts)?),
            requested => {
                let ts = requested.unwrap_or(now).max(meta.last_ms);
                if ts == meta.last_ms && meta.last_ms > 0 {
                    match meta.last_seq.checked_add(1) {
                        Some(s) => (ts, s),
                        None => (ts + 1, 0),
                    }
                } else {
                    (ts, 0)
                }
            }
        };
        if (ts, seq) > (meta.last_ms, meta.last_seq) || meta.last_ms == 0 {
            meta.last_ms = ts;
            meta.last_seq = seq;
        }
        let start = bucket_start(ts, meta.bucket_ms);
        let name = bucket_table(stream, start);
        let record = model::encode(&model::EventRef {
            kind: e.kind.as_deref(),
            data: &e.data,
        });
        ctx.table(table(&name))?
            .insert(event_key(ts, seq).as_slice(), record.as_slice())?;
        let st = match stats.get_mut(&start) {
            Some(s) => s,
            None => {
                let s = load_bucket(ctx, stream, start)?;
                stats.entry(start).or_insert(s)
            }
        };
        let bytes = (e.data.len() + e.kind.as_ref().map_or(0, |k| k.len())) as u64;
        st.min_ts = if st.events == 0 {
            ts
        } else {
            st.min_ts.min(ts)
        };
        st.max_ts = st.max_ts.max(ts);
        st.events += 1;
        st.bytes += bytes;
        meta.events += 1;
        meta.bytes += bytes;
        ids.push((ts, seq));
    }
    let mut buckets = ctx.table(EV_BUCKETS)?;
    for (start, st) in &stats {
        buckets.insert(
            bucket_key(stream, *start).as_slice(),
            model::encode(st).as_slice(),
        )?;
    }
    drop(buckets);
    save_meta(ctx, stream, &meta)?;
    Ok(ids)
}

fn load_bucket(
    ctx: &ApplyCtx<'_, '_>,
    stream: &str,
    start: u64,
) -> Result<BucketStats, redb::Error> {
    let t = ctx.table(EV_BUCKETS)?;
    let got = t.get(bucket_key(stream, start).as_slice())?;
    Ok(got
        .and_then(|g| model::decode(g.value()).ok())
        .unwrap_or_default())
}

/// The next free sequence number at `ts` (a backfilled timestamp).
fn next_seq_at(
    ctx: &ApplyCtx<'_, '_>,
    stream: &str,
    bucket_ms: u64,
    ts: u64,
) -> Result<u32, redb::Error> {
    let name = bucket_table(stream, bucket_start(ts, bucket_ms));
    let t = ctx.table(table(&name))?;
    let lo = event_key(ts, 0);
    let hi = event_key(ts, u32::MAX);
    let last = t.range(lo.as_slice()..=hi.as_slice())?.next_back();
    Ok(match last {
        Some(item) => {
            let (k, _) = item?;
            parse_event_key(k.value()).map_or(0, |(_, s)| s.saturating_add(1))
        }
        None => 0,
    })
}

/// Creates a stream or changes its retention. Returns (created, meta).
pub fn configure(
    ctx: &mut ApplyCtx<'_, '_>,
    stream: &str,
    bucket_ms: Option<u64>,
    retention_ms: Option<u64>,
    rules: AppendRules,
) -> Res<(bool, StreamMeta)> {
    let existing = load_meta(ctx, stream)?;
    let created = existing.is_none();
    super::feed::note(ctx, super::feed::CONFIGURE, stream, created);
    let mut meta = existing.unwrap_or(StreamMeta {
        version: RECORD_VERSION,
        bucket_ms: bucket_ms.unwrap_or(rules.bucket_ms),
        retention_ms: rules.retention_ms,
        created_ms: ctx.now_ms,
        last_ms: 0,
        last_seq: 0,
        events: 0,
        bytes: 0,
    });
    if let Some(b) = bucket_ms {
        if b != meta.bucket_ms {
            return Err(EventError::BucketFixed {
                stream: stream.to_string(),
                bucket_ms: meta.bucket_ms,
            }
            .into());
        }
    }
    if let Some(r) = retention_ms {
        meta.retention_ms = r;
    }
    save_meta(ctx, stream, &meta)?;
    Ok((created, meta))
}

/// Deletes events before `before`: whole buckets (at most `buckets_max`) by dropping their
/// tables; with `partial`, also up to `events_max` events of the bucket holding `before`.
/// Returns (dropped buckets, deleted events, more work remains).
pub fn trim(
    ctx: &mut ApplyCtx<'_, '_>,
    stream: &str,
    before: u64,
    partial: bool,
    buckets_max: usize,
    events_max: usize,
) -> Res<(u64, u64, bool)> {
    let Some(mut meta) = load_meta(ctx, stream)? else {
        return Err(EventError::StreamNotFound(stream.to_string()).into());
    };
    let cause = if partial {
        super::feed::BY_TRIM
    } else {
        super::feed::BY_RETENTION
    };
    let note = super::feed::Dropped::note(ctx, super::feed::TRIM, stream, cause);
    // How far this commit gets: every event before it is gone (for the feed).
    let mut gone_before = 0;
    let prefix = bucket_prefix(stream);
    let mut whole = Vec::new();
    let mut partial_bucket = None;
    let mut more = false;
    {
        let buckets = ctx.table(EV_BUCKETS)?;
        for item in buckets.range(prefix.as_slice()..)? {
            let (k, v) = item?;
            let k = k.value();
            if !k.starts_with(&prefix) || k.len() != prefix.len() + 8 {
                break;
            }
            let start = u64::from_be_bytes(k[prefix.len()..].try_into().unwrap_or([0xff; 8]));
            if start >= before {
                break;
            }
            let st: BucketStats = model::decode(v.value()).unwrap_or_default();
            if start.saturating_add(meta.bucket_ms) <= before {
                if whole.len() == buckets_max {
                    more = true;
                    break;
                }
                whole.push((start, st));
            } else {
                partial_bucket = Some((start, st));
                break;
            }
        }
    }
    let (mut dropped, mut deleted) = (0u64, 0u64);
    for (start, st) in &whole {
        ctx.delete_table(table(&bucket_table(stream, *start)))?;
        ctx.table(EV_BUCKETS)?
            .remove(bucket_key(stream, *start).as_slice())?;
        meta.events = meta.events.saturating_sub(st.events);
        meta.bytes = meta.bytes.saturating_sub(st.bytes);
        dropped += 1;
        deleted += st.events;
        gone_before = start.saturating_add(meta.bucket_ms);
    }
    if let (true, false, Some((start, mut st))) = (partial, more, partial_bucket) {
        let name = bucket_table(stream, start);
        let mut t = ctx.table(table(&name))?;
        let end = event_key(before, 0);
        let mut victims = Vec::new();
        for item in t.range(..end.as_slice())? {
            let (k, v) = item?;
            if victims.len() == events_max {
                more = true;
                break;
            }
            let size = model::decode::<Event>(v.value())
                .map(|e| (e.data.len() + e.kind.map_or(0, |k| k.len())) as u64)
                .unwrap_or(0);
            victims.push((k.value().to_vec(), size));
        }
        // All of the bucket before `before` when it fits this commit; else up to the last
        // event taken (events at its very millisecond may remain).
        gone_before = match (more, victims.last()) {
            (false, _) => before,
            (true, Some((k, _))) => u64::from_be_bytes(k[..8].try_into().unwrap_or([0; 8])),
            (true, None) => gone_before,
        };
        for (k, size) in &victims {
            t.remove(k.as_slice())?;
            st.events = st.events.saturating_sub(1);
            st.bytes = st.bytes.saturating_sub(*size);
            meta.events = meta.events.saturating_sub(1);
            meta.bytes = meta.bytes.saturating_sub(*size);
            deleted += 1;
        }
        let min_ts = st.min_ts.max(before);
        drop(t);
        if !victims.is_empty() || min_ts != st.min_ts {
            st.min_ts = min_ts;
            ctx.table(EV_BUCKETS)?.insert(
                bucket_key(stream, start).as_slice(),
                model::encode(&st).as_slice(),
            )?;
        }
    }
    // Nothing to drop (the usual retention pass) writes nothing: no log record, no commit.
    if dropped > 0 || deleted > 0 {
        save_meta(ctx, stream, &meta)?;
    }
    note.done(ctx, gone_before);
    Ok((dropped, deleted, more))
}

/// Drops up to `buckets_max` bucket tables of a stream, and the stream itself once none are
/// left. Returns (dropped, more remain).
pub fn drop_stream(
    ctx: &mut ApplyCtx<'_, '_>,
    stream: &str,
    buckets_max: usize,
) -> Res<(u64, bool)> {
    let Some(mut meta) = load_meta(ctx, stream)? else {
        return Err(EventError::StreamNotFound(stream.to_string()).into());
    };
    let note = super::feed::Dropped::note(
        ctx,
        super::feed::DROP_STREAM,
        stream,
        super::feed::BY_DELETE,
    );
    let prefix = bucket_prefix(stream);
    let mut starts = Vec::new();
    let mut more = false;
    {
        let buckets = ctx.table(EV_BUCKETS)?;
        for item in buckets.range(prefix.as_slice()..)? {
            let (k, v) = item?;
            let k = k.value();
            if !k.starts_with(&prefix) || k.len() != prefix.len() + 8 {
                break;
            }
            if starts.len() == buckets_max {
                more = true;
                break;
            }
            starts.push(u64::from_be_bytes(
                k[prefix.len()..].try_into().unwrap_or([0; 8]),
            ));
            // The stream's totals follow its buckets, so a drop that stops between its commits
            // (crash, shutdown, client gone) leaves a consistent stream (invariant 15).
            let st: BucketStats = model::decode(v.value()).unwrap_or_default();
            meta.events = meta.events.saturating_sub(st.events);
            meta.bytes = meta.bytes.saturating_sub(st.bytes);
        }
    }
    for start in &starts {
        ctx.delete_table(table(&bucket_table(stream, *start)))?;
        ctx.table(EV_BUCKETS)?
            .remove(bucket_key(stream, *start).as_slice())?;
    }
    if let Some(last) = starts.last() {
        note.done(ctx, last.saturating_add(meta.bucket_ms));
    }
    if more {
        save_meta(ctx, stream, &meta)?;
    } else {
        ctx.table(EV_STREAMS)?.remove(stream.as_bytes())?;
    }
    Ok((starts.len() as u64, more))
}
