//! Time-bucketed event streams: append, range, counts, tail, retention. No HTTP here.
//!
//! A stream lives on one shard (routed by its name) and keeps one redb table per time bucket, so
//! a query for an hour opens only the buckets that overlap it, and retention drops whole tables
//! instead of deleting rows.

mod error;
mod feed;
internal!(apply, model);
pub use apply::NewEvent;
pub use error::EventError;

use crate::base::invalid::{Invalid, ItemKind};
use crate::engine::Engine;
use apply::AppendRules;
use model::*;
use redb::{ReadableTable, TableDefinition};
use std::collections::HashMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

testing_pub! {
    /// The events domain as the engine sees it.
    const DOMAIN: crate::engine::DomainSpec = crate::engine::DomainSpec {
        name: "events",
        init_tables,
        check,
        open: Some(|engine, config| std::sync::Arc::new(Events::from_config(engine, config))),
        feed: Some(&feed::FEED),
    };
}

/// `shardbox check` for streams (invariant 15): every stream, bucket and event record decodes,
/// every event's key is well formed and lies in its bucket with valid JSON data, each bucket's
/// counters equal its events, and each stream's total equals its buckets'.
fn check(
    txn: &redb::ReadTransaction,
    shard: usize,
    c: &mut crate::engine::domain::Checked<'_>,
) -> Result<(), redb::Error> {
    use crate::engine::domain::open;
    let Some(streams) = open(txn, EV_STREAMS)? else {
        return Ok(());
    };
    let buckets = open(txn, EV_BUCKETS)?;
    for item in streams.iter()? {
        let (k, v) = item?;
        c.record();
        let name = String::from_utf8_lossy(k.value()).into_owned();
        let meta = match model::decode_meta(v.value()) {
            Ok(m) => m,
            Err(e) => {
                c.problem(format!("shard {shard}: stream {name:?}: {e}"));
                continue;
            }
        };
        let Some(buckets) = &buckets else { continue };
        let prefix = bucket_prefix(&name);
        let mut stream_events = 0u64;
        for b in buckets.range(prefix.as_slice()..)? {
            let (bk, bv) = b?;
            let Some(start) = bk
                .value()
                .strip_prefix(prefix.as_slice())
                .and_then(|r| r.try_into().ok())
                .map(u64::from_be_bytes)
            else {
                break;
            };
            c.record();
            let stats: BucketStats = match model::decode(bv.value()) {
                Ok(s) => s,
                Err(e) => {
                    c.problem(format!(
                        "shard {shard}: stream {name:?} bucket {start}: {e}"
                    ));
                    continue;
                }
            };
            stream_events += stats.events;
            let table_name = bucket_table(&name, start);
            let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(&table_name);
            let mut events = 0u64;
            if let Some(t) = open(txn, def)? {
                for e in t.iter()? {
                    let (ek, ev) = e?;
                    c.record();
                    events += 1;
                    match parse_event_key(ek.value()) {
                        Some((ts, _)) if bucket_start(ts, meta.bucket_ms) == start => {}
                        _ => c.problem(format!(
                            "shard {shard}: {table_name}: event key {:?} does not belong in this bucket",
                            ek.value()
                        )),
                    }
                    match model::decode::<Event>(ev.value()) {
                        Err(e) => c.problem(format!(
                            "shard {shard}: {table_name}: event {:?}: {e}",
                            parse_event_key(ek.value())
                        )),
                        Ok(event) => {
                            if let Err(e) =
                                crate::base::util::check_stored_json("data", &event.data)
                            {
                                c.problem(format!("shard {shard}: {table_name}: {e}"));
                            }
                        }
                    }
                }
            }
            if events != stats.events {
                c.problem(format!(
                    "shard {shard}: {table_name}: the bucket counts {} events but holds {events}",
                    stats.events
                ));
            }
        }
        if stream_events != meta.events {
            c.problem(format!(
                "shard {shard}: stream {name:?} counts {} events but its buckets hold {stream_events}",
                meta.events
            ));
        }
    }
    Ok(())
}

/// Creates the event tables in a shard.
pub fn init_tables(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(EV_STREAMS)?;
    txn.open_table(EV_BUCKETS)?;
    Ok(())
}

/// Bounds and defaults of the events domain.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub event_bytes_max: usize,
    pub append_events_max: usize,
    pub range_limit_max: usize,
    pub future_skew_max_ms: u64,
    pub default_bucket_ms: u64,
    pub default_retention_ms: u64,
    /// Buckets dropped (and events trimmed ×1000) per commit by trims and retention.
    pub trim_buckets_max: usize,
}

/// An event as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventOut {
    pub ts: u64,
    pub seq: u32,
    pub kind: Option<String>,
    /// JSON text.
    pub data: Vec<u8>,
}

impl EventOut {
    pub fn id(&self) -> String {
        format_id(self.ts, self.seq)
    }
}

/// A stream's configuration and stats.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamInfo {
    pub name: String,
    pub bucket_ms: u64,
    pub retention_ms: u64,
    pub events: u64,
    pub bytes: u64,
    pub buckets: u64,
    pub oldest: Option<u64>,
    pub newest: Option<u64>,
    pub created_at: u64,
}

/// A range query.
#[derive(Debug, Clone, Default)]
pub struct RangeQuery {
    pub from: Option<u64>,
    pub to: Option<u64>,
    pub kind: Option<String>,
    pub desc: bool,
    pub limit: usize,
    /// Continue after this id (exclusive), in the query's order.
    pub after: Option<(u64, u32)>,
}

/// One (key, value) item of a bucket table scan.
type EventItem<'a> = Result<
    (
        redb::AccessGuard<'a, &'static [u8]>,
        redb::AccessGuard<'a, &'static [u8]>,
    ),
    redb::StorageError,
>;

pub struct Events {
    engine: Arc<Engine>,
    limits: Limits,
    followers: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
    /// Bucket tables opened by range queries (tests check that a range opens only its buckets).
    pub buckets_opened: AtomicU64,
}

pub fn validate_name(stream: &str) -> Result<(), EventError> {
    Ok(crate::base::names::validate_name("stream name", stream)?)
}

/// Parses a bucket width: `1h`, `1d`, `7d`, `30d`.
pub fn parse_bucket(text: &str) -> Result<u64, EventError> {
    Ok(crate::base::util::parse_bucket_ms(text)?)
}

fn storage(shard: usize, e: impl Into<redb::Error>) -> EventError {
    EventError::Engine(crate::engine::storage_error(shard, e))
}

fn routing_key(stream: &str) -> Vec<u8> {
    let mut k = b"stream\0".to_vec();
    k.extend_from_slice(stream.as_bytes());
    k
}

impl Events {
    testing_pub! {
        /// The events domain with its settings section of `config`.
        fn from_config(engine: Arc<Engine>, config: &crate::base::config::Config) -> Events {
            Events::new(
                engine,
                Limits {
                    event_bytes_max: config.events.event_bytes_max,
                    append_events_max: config.events.append_events_max,
                    range_limit_max: config.events.range_limit_max,
                    future_skew_max_ms: config.events.future_skew_max_ms,
                    default_bucket_ms: config.events.default_bucket.ms(),
                    default_retention_ms: config.events.default_retention_ms,
                    trim_buckets_max: config.events.trim_buckets_max,
                },
            )
        }
    }

    testing_pub! {
        fn new(engine: Arc<Engine>, limits: Limits) -> Self {
            Self {
                engine,
                limits,
                followers: Arc::new(Mutex::new(HashMap::new())),
                buckets_opened: AtomicU64::new(0),
            }
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn shard(&self, stream: &str) -> usize {
        self.engine.shard_for(&routing_key(stream))
    }

    fn rules(&self) -> AppendRules {
        AppendRules {
            bucket_ms: self.limits.default_bucket_ms,
            retention_ms: self.limits.default_retention_ms,
            future_skew_max_ms: self.limits.future_skew_max_ms,
        }
    }

    /// The notifier followers of `stream` wait on.
    pub fn follower(&self, stream: &str) -> Arc<Notify> {
        let mut map = self.followers.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 4096 {
            map.retain(|_, n| Arc::strong_count(n) > 1);
        }
        map.entry(stream.to_string()).or_default().clone()
    }

    /// A record copied from the primary appended to `stream` (a standby's follower): its
    /// followers and long polls wake as on the primary (`store::follow`).
    pub(crate) fn replayed(&self, stream: &[u8]) {
        if let Ok(name) = std::str::from_utf8(stream) {
            Self::wake(&self.followers, name);
        }
    }

    /// Wakes the followers of `stream`: run by the writer after the commit of an append, so
    /// they are woken even when the appending request goes away before its reply.
    fn wake(followers: &Mutex<HashMap<String, Arc<Notify>>>, stream: &str) {
        let map = followers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get(stream) {
            n.notify_waiters();
        }
    }

    /// Appends events, all or nothing; returns their ids.
    pub async fn append(
        &self,
        stream: &str,
        events: Vec<NewEvent>,
    ) -> Result<Vec<String>, EventError> {
        validate_name(stream)?;
        if events.is_empty() || events.len() > self.limits.append_events_max {
            return Err(Invalid::RequestSize {
                verb: "appends",
                items: "events",
                max: self.limits.append_events_max,
                got: events.len(),
            }
            .into());
        }
        let mut bytes = 0;
        for (i, e) in events.iter().enumerate() {
            if e.data.len() > self.limits.event_bytes_max {
                return Err(EventError::TooLarge {
                    event: i,
                    len: e.data.len(),
                    max: self.limits.event_bytes_max,
                });
            }
            crate::base::util::check_stored_json("data", &e.data)
                .map_err(|err| err.at(ItemKind::Event, i))?;
            // A type is written raw into SSE `event:` lines: no control characters (a newline
            // would start another field, e.g. a forged `id:`).
            if e.kind
                .as_ref()
                .is_some_and(|k| k.is_empty() || k.len() > 64 || k.chars().any(char::is_control))
            {
                return Err(Invalid::EventType.at(ItemKind::Event, i).into());
            }
            // Id 0-0 marks "no event yet" in the stream record: a timestamp of 0 would collide.
            if e.ts == Some(0) {
                return Err(Invalid::TsZero.at(ItemKind::Event, i).into());
            }
            bytes += e.data.len();
        }
        let (name, rules) = (stream.to_string(), self.rules());
        let followers = self.followers.clone();
        let ids = self
            .engine
            .write(self.shard(stream), bytes, move |ctx| {
                let ids = apply::append(ctx, &name, &events, rules);
                if ids.is_ok() {
                    ctx.after_commit(move || Self::wake(&followers, &name));
                }
                ids
            })
            .await?;
        Ok(ids.into_iter().map(|(t, s)| format_id(t, s)).collect())
    }

    /// Creates a stream or updates its retention. Returns (created, info).
    pub async fn configure(
        &self,
        stream: &str,
        bucket_ms: Option<u64>,
        retention_ms: Option<u64>,
    ) -> Result<(bool, StreamInfo), EventError> {
        validate_name(stream)?;
        // The API's duration bound, for every caller (import included).
        if retention_ms.is_some_and(|r| r > crate::base::util::DURATION_MS_MAX) {
            return Err(Invalid::DurationTooLong {
                field: "retention",
                max_ms: crate::base::util::DURATION_MS_MAX,
            }
            .into());
        }
        if let Some(b) = bucket_ms {
            if !crate::base::util::BUCKET_WIDTHS
                .iter()
                .any(|(_, ms)| *ms == b)
            {
                return Err(Invalid::BucketWidth {
                    got: format!("{b} ms"),
                }
                .into());
            }
        }
        let (name, rules) = (stream.to_string(), self.rules());
        let (created, _) = self
            .engine
            .write(self.shard(stream), 0, move |ctx| {
                apply::configure(ctx, &name, bucket_ms, retention_ms, rules)
            })
            .await?;
        let info = self
            .info(stream)?
            .ok_or_else(|| EventError::StreamNotFound(stream.to_string()))?;
        Ok((created, info))
    }

    /// Drops a stream and all its buckets (in bounded commits).
    pub async fn drop_stream(&self, stream: &str) -> Result<(), EventError> {
        validate_name(stream)?;
        let max = self.limits.trim_buckets_max;
        loop {
            let name = stream.to_string();
            let (_, more) = self
                .engine
                .write_freeing(self.shard(stream), 0, move |ctx| {
                    apply::drop_stream(ctx, &name, max)
                })
                .await?;
            if !more {
                return Ok(());
            }
        }
    }

    /// Deletes events before `before`: whole buckets are dropped; with `partial` the bucket
    /// holding `before` is trimmed too. Returns (dropped buckets, deleted events).
    pub async fn trim(
        &self,
        stream: &str,
        before: u64,
        partial: bool,
    ) -> Result<(u64, u64), EventError> {
        validate_name(stream)?;
        let (bmax, emax) = (
            self.limits.trim_buckets_max,
            self.limits.trim_buckets_max * 1000,
        );
        let (mut dropped, mut deleted) = (0, 0);
        loop {
            let name = stream.to_string();
            let (d, e, more) = self
                .engine
                .write_freeing(self.shard(stream), 0, move |ctx| {
                    apply::trim(ctx, &name, before, partial, bmax, emax)
                })
                .await?;
            dropped += d;
            deleted += e;
            if !more {
                return Ok((dropped, deleted));
            }
        }
    }

    /// Applies every stream's retention once: drops the buckets entirely older than
    /// `now - retention`. Returns the buckets dropped.
    /// One stream's damage does not stop retention for the others: it is logged and skipped.
    pub async fn apply_retention(&self) -> Result<u64, EventError> {
        let now = self.engine.now_ms();
        let mut dropped = 0;
        for name in self.names()? {
            // Only the stream record is read here; trim opens just the buckets it drops.
            let outcome = match self.read_meta(&name) {
                Ok(Some((_, meta))) if meta.retention_ms > 0 => {
                    let cutoff = now.saturating_sub(meta.retention_ms);
                    self.trim(&name, cutoff, false).await.map(|(n, _)| n)
                }
                Ok(_) => Ok(0),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(n) => dropped += n,
                Err(e) => tracing::warn!(stream = %name, error = %e, "event retention"),
            }
        }
        Ok(dropped)
    }

    /// The retention task.
    pub async fn run_retention(self: Arc<Self>, interval: std::time::Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.engine.is_closing() {
                return;
            }
            if let Err(e) = self.apply_retention().await {
                tracing::warn!(error = %e, "event retention");
            }
        }
    }

    fn read_meta(&self, stream: &str) -> Result<Option<(usize, StreamMeta)>, EventError> {
        validate_name(stream)?;
        let shard = self.shard(stream);
        let txn = self.engine.shards()[shard].read()?;
        let t = txn.open_table(EV_STREAMS).map_err(|e| storage(shard, e))?;
        let got = t.get(stream.as_bytes()).map_err(|e| storage(shard, e))?;
        match got {
            None => Ok(None),
            Some(g) => Ok(Some((
                shard,
                model::decode_meta(g.value()).map_err(EventError::Corrupt)?,
            ))),
        }
    }

    /// The buckets of a stream overlapping [from, to), with their stats, in ascending order.
    fn buckets(
        &self,
        shard: usize,
        stream: &str,
        meta: &StreamMeta,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, BucketStats)>, EventError> {
        let txn = self.engine.shards()[shard].read()?;
        let t = txn.open_table(EV_BUCKETS).map_err(|e| storage(shard, e))?;
        let lo = bucket_key(stream, bucket_start(from, meta.bucket_ms));
        let hi = bucket_key(stream, to.saturating_sub(1));
        let mut out = Vec::new();
        if to <= from {
            return Ok(out);
        }
        let prefix = bucket_prefix(stream);
        for item in t
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(|e| storage(shard, e))?
        {
            let (k, v) = item.map_err(|e| storage(shard, e))?;
            let k = k.value();
            if k.len() != prefix.len() + 8 {
                continue;
            }
            let start = u64::from_be_bytes(k[prefix.len()..].try_into().unwrap_or([0; 8]));
            let st: BucketStats = model::decode(v.value()).map_err(EventError::Corrupt)?;
            if st.events > 0 {
                out.push((start, st));
            }
        }
        Ok(out)
    }

    /// A stream's configuration and stats; `None` if it does not exist.
    pub fn info(&self, stream: &str) -> Result<Option<StreamInfo>, EventError> {
        let Some((shard, meta)) = self.read_meta(stream)? else {
            return Ok(None);
        };
        let all = self.buckets(shard, stream, &meta, 0, u64::MAX)?;
        Ok(Some(StreamInfo {
            name: stream.to_string(),
            bucket_ms: meta.bucket_ms,
            retention_ms: meta.retention_ms,
            events: meta.events,
            bytes: meta.bytes,
            buckets: all.len() as u64,
            oldest: all.iter().map(|(_, s)| s.min_ts).min(),
            newest: all.iter().map(|(_, s)| s.max_ts).max(),
            created_at: meta.created_ms,
        }))
    }

    /// Every stream with its stats.
    pub fn list(&self) -> Result<Vec<StreamInfo>, EventError> {
        Ok(self.page(None, usize::MAX)?.0)
    }

    /// At most `limit` streams in name order after `after`, and the cursor of the next page
    /// (the last name) when more follow. Only the page's streams are read.
    pub fn page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<StreamInfo>, Option<String>), EventError> {
        crate::base::util::page_by_name(self.names()?, after, limit, |n| self.info(n))
    }

    /// Every stream's name, sorted.
    fn names(&self) -> Result<Vec<String>, EventError> {
        let mut names = Vec::new();
        for shard in self.engine.shards() {
            let txn = shard.read()?;
            let t = txn
                .open_table(EV_STREAMS)
                .map_err(|e| storage(shard.id, e))?;
            for item in t.iter().map_err(|e| storage(shard.id, e))? {
                let (k, _) = item.map_err(|e| storage(shard.id, e))?;
                names.push(String::from_utf8_lossy(k.value()).into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Events in [from, to) in the query's order, at most `limit`, and whether more follow.
    /// Opens only the buckets that overlap the range.
    pub fn range(&self, stream: &str, q: &RangeQuery) -> Result<(Vec<EventOut>, bool), EventError> {
        if q.limit == 0 || q.limit > self.limits.range_limit_max {
            return Err(Invalid::OutOfRange {
                field: "limit",
                min: 1,
                max: self.limits.range_limit_max as u64,
            }
            .into());
        }
        let Some((shard, meta)) = self.read_meta(stream)? else {
            return Err(EventError::StreamNotFound(stream.to_string()));
        };
        let (from, to) = (q.from.unwrap_or(0), q.to.unwrap_or(u64::MAX));
        let mut buckets = self.buckets(shard, stream, &meta, from, to)?;
        if q.desc {
            buckets.reverse();
        }
        let txn = self.engine.shards()[shard].read()?;
        let lo_key = event_key(from, 0);
        let hi_key = event_key(to, 0);
        let after_key = q.after.map(|(t, s)| event_key(t, s));
        let mut out = Vec::new();
        for (start, _) in buckets {
            // Skip buckets wholly on the far side of the cursor without opening them.
            if let Some((at, _)) = q.after {
                let end = start.saturating_add(meta.bucket_ms);
                if (!q.desc && end <= at) || (q.desc && start > at) {
                    continue;
                }
            }
            let name = bucket_table(stream, start);
            let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(&name);
            let t = match txn.open_table(def) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(storage(shard, e)),
            };
            self.buckets_opened.fetch_add(1, Ordering::Relaxed);
            let mut lower = Bound::Included(lo_key.as_slice());
            let mut upper = Bound::Excluded(hi_key.as_slice());
            if let Some(a) = &after_key {
                if q.desc {
                    if a.as_slice() < hi_key.as_slice() {
                        upper = Bound::Excluded(a.as_slice());
                    }
                } else if a.as_slice() >= lo_key.as_slice() {
                    lower = Bound::Excluded(a.as_slice());
                }
            }
            let range = t
                .range::<&[u8]>((lower, upper))
                .map_err(|e| storage(shard, e))?;
            let mut visit = |item: EventItem<'_>| -> Result<bool, EventError> {
                let (k, v) = item.map_err(|e| storage(shard, e))?;
                let Some((ts, seq)) = parse_event_key(k.value()) else {
                    return Ok(true);
                };
                let ev: Event = model::decode(v.value()).map_err(EventError::Corrupt)?;
                if q.kind.is_some() && ev.kind != q.kind {
                    return Ok(true);
                }
                out.push(EventOut {
                    ts,
                    seq,
                    kind: ev.kind,
                    data: ev.data,
                });
                Ok(out.len() <= q.limit)
            };
            if q.desc {
                for item in range.rev() {
                    if !visit(item)? {
                        break;
                    }
                }
            } else {
                for item in range {
                    if !visit(item)? {
                        break;
                    }
                }
            }
            if out.len() > q.limit {
                break;
            }
        }
        let more = out.len() > q.limit;
        out.truncate(q.limit);
        Ok((out, more))
    }

    /// Event counts per `step` over [from, to): from the per-bucket counters when `step` is a
    /// multiple of the bucket width and the range is bucket-aligned, by scanning otherwise.
    pub fn counts(
        &self,
        stream: &str,
        from: u64,
        to: u64,
        step: u64,
    ) -> Result<Vec<(u64, u64)>, EventError> {
        let Some((shard, meta)) = self.read_meta(stream)? else {
            return Err(EventError::StreamNotFound(stream.to_string()));
        };
        if step == 0 || to <= from {
            return Err(Invalid::CountWindow.into());
        }
        let steps = (to - from).div_ceil(step);
        if steps > 10_000 {
            return Err(Invalid::TooManySteps { steps, max: 10_000 }.into());
        }
        let mut counts = vec![0u64; steps as usize];
        let aligned = step.is_multiple_of(meta.bucket_ms) && from.is_multiple_of(meta.bucket_ms);
        if aligned {
            for (start, st) in self.buckets(shard, stream, &meta, from, to)? {
                if start >= from && start < to {
                    counts[((start - from) / step) as usize] += st.events;
                }
            }
        } else {
            let mut q = RangeQuery {
                from: Some(from),
                to: Some(to),
                limit: self.limits.range_limit_max,
                ..RangeQuery::default()
            };
            loop {
                let (events, more) = self.range(stream, &q)?;
                for e in &events {
                    counts[((e.ts - from) / step) as usize] += 1;
                }
                match (more, events.last()) {
                    (true, Some(last)) => q.after = Some((last.ts, last.seq)),
                    _ => break,
                }
            }
        }
        Ok(counts
            .into_iter()
            .enumerate()
            .map(|(i, c)| (from + i as u64 * step, c))
            .collect())
    }
}

impl crate::engine::Domain for Events {
    fn background(
        self: Arc<Self>,
        config: &crate::base::config::Config,
    ) -> Vec<futures_util::future::BoxFuture<'static, ()>> {
        vec![Box::pin(self.run_retention(
            std::time::Duration::from_millis(config.events.retention_interval_ms),
        ))]
    }
    fn render_metrics(&self, _out: &mut String) {}
}
