//! `shardbox export` / `import`: every KV value, stream, event, queue, job and schedule as
//! NDJSON, one object per line — the portable format for moving data to another system (or
//! another shardbox). Unlike a backup it is readable, editable and independent of redb and of
//! the shard count; like a backup it is read from read transactions, so it can run against a
//! live server (`GET /v1/admin/export`).
//!
//! Format (version 1), in this order:
//!
//! ```text
//! {"type":"header","format":"shardbox-export","version":1,"exported_at_ms":…,"position":"<generation>:<lsn>:<index>"}
//! {"type":"kv","ns":"app","key":"a/b","value":"text"|"value_b64":"…","content_type":…,"expires_at_ms":…}
//! {"type":"stream","name":"clicks","bucket_ms":3600000,"retention_ms":0}
//! {"type":"event","stream":"clicks","id":"…","ts":…,"kind":…,"data":{…}}
//! {"type":"queue","name":"mail","paused":false,"max_depth":0,"default_lease_ms":30000,"max_attempts":5,"backoff":{…}}
//! {"type":"job","queue":"mail","id":"…","state":"ready","payload":{…},"priority":0,"run_at_ms":…,"attempts":0,"max_attempts":5,"backoff":{…},…}
//! {"type":"schedule","name":"nightly","cron":"0 3 * * *","queue":"mail","payload":{…},"priority":0,"max_attempts":null}
//! {"type":"end","lines":N}
//! ```
//!
//! Import goes through the same domain calls as the HTTP API, so a hand-edited file is
//! validated exactly like a request (nothing the API would refuse gets in). It reads the file
//! twice: first every line is parsed and the `end` line's count checked (a truncated or damaged
//! file imports nothing), then it writes. What does not travel: revisions (a value gets a new
//! one), job ids and attempts (jobs are enqueued afresh, in order), leases (an in-flight job is
//! imported ready), dead jobs (listed in the file, reported, not imported), dedupe windows,
//! cache entries and idempotency records.

use crate::engine::codec;
use crate::events::{apply::NewEvent, RangeQuery};
use crate::kv::{PutOptions, KV};
use crate::base::progress::Progress;
use crate::queue::model::{Backoff, Job as StoredJob, QueueConfig, State};
use crate::queue::schedules::ScheduleSpec;
use crate::queue::NewJob;
use crate::store::Store;
use base64::Engine as _;
use redb::ReadableTable;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::io::{BufRead, Write};

pub const FORMAT: &str = "shardbox-export";
pub const VERSION: u32 = 1;

/// Longest line import accepts (a value of `value_bytes_max` in base64 fits the default).
const LINE_BYTES_MAX: usize = 64 << 20;

/// One line of an export file. Written with `"type"` as its tag; read by [`parse_line`]
/// (serde's internally tagged enums cannot hold the raw JSON of payloads and event data).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    Header(Header),
    Kv(Kv),
    Stream(Stream),
    Event(Event),
    Queue(Queue),
    Job(Job),
    Schedule(Schedule),
    End(End),
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub exported_at_ms: u64,
    /// The change-feed position the export is consistent with: every change up to it is in
    /// the file (and some after it may be: the shards are read one after another while writes
    /// go on). Reading the feed from it and applying each change over the file gives the store
    /// as it is then — every change sets the whole state of what it names. Absent in files
    /// written before the feed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Kv {
    pub ns: String,
    pub key: String,
    /// The value when it is UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value in standard base64 otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_b64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Stream {
    pub name: String,
    pub bucket_ms: u64,
    pub retention_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Event {
    pub stream: String,
    /// The id it had (`<ts>-<seq>`); import keeps its timestamp, and ids of one
    /// millisecond keep their order.
    pub id: String,
    pub ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub data: Box<RawValue>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Queue {
    pub name: String,
    pub paused: bool,
    pub max_depth: u64,
    pub default_lease_ms: u64,
    pub max_attempts: u32,
    #[serde(deserialize_with = "crate::base::json_object::object")]
    pub backoff: Backoff,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Job {
    pub queue: String,
    pub id: String,
    pub state: String,
    pub payload: Box<RawValue>,
    pub priority: u8,
    pub run_at_ms: u64,
    pub attempts: u32,
    pub max_attempts: u32,
    #[serde(deserialize_with = "crate::base::json_object::object")]
    pub backoff: Backoff,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedupe_key: Option<String>,
    pub enqueued_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Schedule {
    pub name: String,
    pub cron: String,
    pub queue: String,
    pub payload: Box<RawValue>,
    pub priority: u8,
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct End {
    pub lines: u64,
}

/// Parses one line: its `"type"` picks the record; fields it does not know are ignored (a
/// newer exporter may add some).
pub fn parse_line(bytes: &[u8]) -> Result<Line, String> {
    use crate::base::json_object::from_object;
    #[derive(Deserialize)]
    struct Tag {
        #[serde(rename = "type")]
        kind: String,
    }
    let e = |e: serde_json::Error| e.to_string();
    let tag: Tag = from_object(bytes).map_err(e)?;
    Ok(match tag.kind.as_str() {
        "header" => Line::Header(from_object(bytes).map_err(e)?),
        "kv" => Line::Kv(from_object(bytes).map_err(e)?),
        "stream" => Line::Stream(from_object(bytes).map_err(e)?),
        "event" => Line::Event(from_object(bytes).map_err(e)?),
        "queue" => Line::Queue(from_object(bytes).map_err(e)?),
        "job" => Line::Job(from_object(bytes).map_err(e)?),
        "schedule" => Line::Schedule(from_object(bytes).map_err(e)?),
        "end" => Line::End(from_object(bytes).map_err(e)?),
        other => {
            return Err(format!(
            "unknown record type `{other}` (header, kv, stream, event, queue, job, schedule, end)"
        ))
        }
    })
}

/// What an export or import went through, by kind.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub kv: u64,
    pub streams: u64,
    pub events: u64,
    pub queues: u64,
    pub jobs: u64,
    pub schedules: u64,
    /// Dead jobs in the file that import left out.
    pub dead_jobs_skipped: u64,
    /// Values that expired, and events older than their stream's retention, since the export.
    pub expired_skipped: u64,
}

/// Stored JSON as it goes into a line: verbatim, on one line (a job payload is stored as it
/// was sent, pretty-printed ones included).
fn raw(what: &str, json: Vec<u8>) -> Result<Box<RawValue>, String> {
    String::from_utf8(json)
        .ok()
        .map(|s| crate::base::util::one_line(&s).into_owned())
        .and_then(|s| RawValue::from_string(s).ok())
        .ok_or_else(|| format!("{what}: the stored JSON is damaged (run shardbox check)"))
}

struct Writer<'w> {
    out: &'w mut dyn Write,
    lines: u64,
}

impl Writer<'_> {
    fn line(&mut self, l: &Line) -> Result<(), String> {
        serde_json::to_writer(&mut *self.out, l).map_err(|e| format!("writing the export: {e}"))?;
        self.out
            .write_all(b"\n")
            .map_err(|e| format!("writing the export: {e}"))?;
        self.lines += 1;
        Ok(())
    }
}

/// Writes every record of `store` to `out` as NDJSON; `progress` counts records.
pub fn export(store: &Store, out: &mut dyn Write, progress: &Progress) -> Result<Counts, String> {
    let mut w = Writer { out, lines: 0 };
    let mut n = Counts::default();
    let engine = store.engine();
    let now = engine.now_ms();
    w.line(&Line::Header(Header {
        format: FORMAT.into(),
        version: VERSION,
        exported_at_ms: now,
        position: Some(engine.feed().end().to_string()),
    }))?;
    let err = |e: &dyn std::fmt::Display| e.to_string();

    for shard in engine.shards() {
        let txn = shard.read().map_err(|e| err(&e))?;
        let t = txn.open_table(KV).map_err(|e| err(&e))?;
        for item in t.iter().map_err(|e| err(&e))? {
            let (k, v) = item.map_err(|e| err(&e))?;
            let Some((ns, key)) = std::str::from_utf8(k.value())
                .ok()
                .and_then(|s| s.split_once('\0'))
            else {
                return Err(format!("shard {}: a KV key is not ns\\0key", shard.id));
            };
            let (h, payload) = codec::decode(v.value())
                .map_err(|e| format!("shard {}: kv {ns}/{key}: {e}", shard.id))?;
            if h.is_expired(now) {
                continue;
            }
            let (value, value_b64) = match std::str::from_utf8(payload) {
                Ok(s) => (Some(s.to_string()), None),
                Err(_) => (
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(payload)),
                ),
            };
            w.line(&Line::Kv(Kv {
                ns: ns.into(),
                key: key.into(),
                value,
                value_b64,
                content_type: h.content_type,
                expires_at_ms: h.expires_at_ms,
            }))?;
            n.kv += 1;
            progress.inc(1);
        }
    }

    let events = store.events();
    let range_max = events.limits().range_limit_max;
    for s in events.list().map_err(|e| err(&e))? {
        w.line(&Line::Stream(Stream {
            name: s.name.clone(),
            bucket_ms: s.bucket_ms,
            retention_ms: s.retention_ms,
        }))?;
        n.streams += 1;
        let mut after = None;
        loop {
            let q = RangeQuery {
                limit: range_max,
                after,
                ..RangeQuery::default()
            };
            let (batch, more) = match events.range(&s.name, &q) {
                Ok(r) => r,
                // Dropped while the export ran: it is simply not in it.
                Err(crate::events::EventError::StreamNotFound(_)) => break,
                Err(e) => return Err(err(&e)),
            };
            for e in &batch {
                w.line(&Line::Event(Event {
                    stream: s.name.clone(),
                    id: e.id(),
                    ts: e.ts,
                    kind: e.kind.clone(),
                    data: raw(
                        &format!("stream {} event {}", s.name, e.id()),
                        e.data.clone(),
                    )?,
                }))?;
                n.events += 1;
                progress.inc(1);
            }
            match batch.last() {
                Some(last) if more => after = Some((last.ts, last.seq)),
                _ => break,
            }
        }
    }

    let queues = store.queues();
    let page = queues.limits().list_limit_max;
    for q in queues.all_stats().map_err(|e| err(&e))? {
        w.line(&Line::Queue(Queue {
            name: q.name.clone(),
            paused: q.paused,
            max_depth: q.max_depth,
            default_lease_ms: q.default_lease_ms,
            max_attempts: q.max_attempts,
            backoff: q.backoff,
        }))?;
        n.queues += 1;
        for state in [State::Ready, State::Delayed, State::InFlight, State::Dead] {
            let mut cursor: Option<String> = None;
            loop {
                let (jobs, next) = queues
                    .list(&q.name, state, cursor.as_deref(), page)
                    .map_err(|e| err(&e))?;
                for j in jobs {
                    w.line(&job_line(&q.name, j)?)?;
                    n.jobs += 1;
                    progress.inc(1);
                }
                match next {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
        }
    }

    for s in queues.list_schedules().map_err(|e| err(&e))? {
        w.line(&Line::Schedule(Schedule {
            payload: raw(&format!("schedule {}", s.name), s.payload)?,
            name: s.name,
            cron: s.cron,
            queue: s.queue,
            priority: s.priority,
            max_attempts: s.max_attempts,
        }))?;
        n.schedules += 1;
        progress.inc(1);
    }
    let lines = w.lines + 1;
    w.line(&Line::End(End { lines }))?;
    w.out
        .flush()
        .map_err(|e| format!("writing the export: {e}"))?;
    progress.finish();
    Ok(n)
}

fn job_line(queue: &str, j: StoredJob) -> Result<Line, String> {
    Ok(Line::Job(Job {
        queue: queue.into(),
        id: j.id.to_string(),
        state: j.state.name().into(),
        payload: raw(&format!("queue {queue} job {}", j.id), j.payload)?,
        priority: j.priority,
        run_at_ms: j.run_at_ms,
        attempts: j.attempts,
        max_attempts: j.max_attempts,
        backoff: j.backoff,
        dedupe_key: j.dedupe_key,
        enqueued_ms: j.enqueued_ms,
        last_error: j.last_error,
    }))
}

/// Reads one line (at most [`LINE_BYTES_MAX`]); `None` at the end.
fn next_line(input: &mut dyn BufRead, buf: &mut Vec<u8>) -> Result<Option<()>, String> {
    buf.clear();
    let n = std::io::Read::take(&mut *input, LINE_BYTES_MAX as u64 + 1)
        .read_until(b'\n', buf)
        .map_err(|e| format!("reading the import: {e}"))?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > LINE_BYTES_MAX {
        return Err(format!("a line is longer than {LINE_BYTES_MAX} bytes"));
    }
    Ok(Some(()))
}

/// A KV line's value bytes: exactly one of `value` and `value_b64`.
fn kv_value(kv: &Kv) -> Result<Vec<u8>, String> {
    match (&kv.value, &kv.value_b64) {
        (Some(v), None) => Ok(v.clone().into_bytes()),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| format!("value_b64: {e}")),
        _ => Err("a kv line needs exactly one of value and value_b64".into()),
    }
}

fn job_state(state: &str) -> Result<State, String> {
    State::parse(state)
        .ok_or_else(|| format!("state `{state}`: one of ready, delayed, in_flight, dead"))
}

/// The shape of a file, line by line: a header first, an `end` line last counting every line,
/// nothing after it; every record converts (base64, job states). Both passes of an import run
/// it, so a file that changed between them is caught too.
#[derive(Default)]
struct Shape {
    lines: u64,
    ended: bool,
}

impl Shape {
    /// Parses line `buf` (the next one) and checks it in its place.
    fn line(&mut self, buf: &[u8]) -> Result<Line, String> {
        self.lines += 1;
        let n = self.lines;
        if self.ended {
            return Err(format!("line {n}: data after the end line"));
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            return Err(format!("line {n}: empty"));
        }
        let line = parse_line(buf).map_err(|e| format!("line {n}: {e}"))?;
        match &line {
            Line::Header(h) if n == 1 && (h.format != FORMAT || h.version != VERSION) => {
                return Err(format!(
                    "line 1: a {} version {} file; this shardbox reads {FORMAT} version {VERSION}",
                    h.format, h.version
                ));
            }
            Line::Header(_) if n == 1 => {}
            _ if n == 1 => return Err("line 1: not a shardbox export header".into()),
            Line::Header(_) => return Err(format!("line {n}: a second header")),
            Line::End(End { lines }) if *lines != n => {
                return Err(format!(
                    "line {n}: the end line counts {lines} lines, the file has {n}"
                ))
            }
            Line::End(_) => self.ended = true,
            Line::Kv(kv) => {
                kv_value(kv).map_err(|e| format!("line {n}: {e}"))?;
            }
            Line::Job(j) => {
                job_state(&j.state).map_err(|e| format!("line {n}: {e}"))?;
            }
            _ => {}
        }
        Ok(line)
    }

    fn finish(&self) -> Result<(), String> {
        if !self.ended {
            return Err(format!(
                "the file ends after {} lines without its end line: it is truncated",
                self.lines
            ));
        }
        Ok(())
    }
}

/// Checks a whole file (every line parsed and converted, the header and the `end` count);
/// writes nothing. Returns the number of records.
pub fn verify(input: &mut dyn BufRead) -> Result<u64, String> {
    let mut buf = Vec::new();
    let mut shape = Shape::default();
    while next_line(input, &mut buf)?.is_some() {
        shape.line(&buf)?;
    }
    shape
        .finish()
        .map_err(|e| format!("{e}; nothing was imported"))?;
    Ok(shape.lines.saturating_sub(2))
}

/// Checks, as it streams by, that an export ends with its `end` line and that the line counts
/// agree (the CLI writing an online export to stdout, where it cannot read it back).
#[derive(Default)]
pub struct EndCheck {
    lines: u64,
    last: Vec<u8>,
}

impl EndCheck {
    pub fn feed(&mut self, mut data: &[u8]) {
        while let Some(i) = data.iter().position(|b| *b == b'\n') {
            self.lines += 1;
            self.last.clear();
            self.last.extend_from_slice(&data[..i]);
            data = &data[i + 1..];
        }
        // A partial line: kept until its newline arrives (bounded: an end line is short).
        if !data.is_empty() && self.last.len() < 4096 {
            self.last.extend_from_slice(data);
        }
    }

    pub fn finish(&self) -> Result<(), String> {
        match parse_line(&self.last) {
            Ok(Line::End(End { lines })) if lines == self.lines => Ok(()),
            _ => Err(format!(
                "the export stopped after {} lines, before its end line: it is incomplete",
                self.lines
            )),
        }
    }
}

/// Events or jobs gathered for one append or enqueue, from consecutive lines starting at the
/// line number it holds.
enum Pending {
    None,
    Events(String, Vec<NewEvent>, u64),
    Jobs(String, Vec<NewJob>, u64),
}

/// Where a refused group of lines starts (item `i` of the group is line `first + i`).
fn lines_of(first: u64, n: usize) -> String {
    match n {
        1 => format!("line {first}"),
        _ => format!(
            "lines {first}-{} (item i is line {first}+i)",
            first + n as u64 - 1
        ),
    }
}

/// A put waiting to be sent: (line, namespace, key, value, options).
type Put = (u64, String, String, Vec<u8>, PutOptions);

/// Puts sent at once (the shard writers commit them in groups).
const PUTS_AT_ONCE: usize = 256;

/// Sends buffered puts, [`PUTS_AT_ONCE`] at a time. On a refusal, puts of nearby lines may have
/// been applied too; the error names the refused line.
async fn flush_puts(store: &Store, puts: &mut Vec<Put>) -> Result<(), String> {
    use futures_util::StreamExt;
    let kv = store.kv();
    let mut results = futures_util::stream::iter(puts.drain(..).map(
        |(line, ns, key, value, opts)| async move {
            kv.put(&ns, &key, value, opts)
                .await
                .map_err(|e| format!("line {line}: kv {ns}/{key}: {e}"))
        },
    ))
    .buffer_unordered(PUTS_AT_ONCE);
    while let Some(r) = results.next().await {
        r?;
    }
    Ok(())
}

/// Sends the pending append or enqueue.
async fn flush(store: &Store, pending: &mut Pending) -> Result<(), String> {
    match std::mem::replace(pending, Pending::None) {
        Pending::None => Ok(()),
        Pending::Events(s, evs, first) => {
            let at = lines_of(first, evs.len());
            store
                .events()
                .append(&s, evs)
                .await
                .map(|_| ())
                .map_err(|e| format!("{at}: stream {s}: {e}"))
        }
        Pending::Jobs(q, jobs, first) => {
            let at = lines_of(first, jobs.len());
            store
                .queues()
                .enqueue(&q, jobs)
                .await
                .map(|_| ())
                .map_err(|e| format!("{at}: queue {q}: {e}"))
        }
    }
}

/// Imports a file that [`verify`] accepted (reading it again from the start, checking its
/// shape again). Stops at the first record the store refuses, naming its line; what came before
/// it stays imported. Memory is bounded by `json_body_bytes_max` per group of puts, events or
/// jobs (and the API's batch sizes).
pub async fn import(
    store: &Store,
    input: &mut dyn BufRead,
    progress: &Progress,
) -> Result<Counts, String> {
    let mut n = Counts::default();
    let mut buf = Vec::new();
    let mut shape = Shape::default();
    let mut pending = Pending::None;
    let mut pending_bytes = 0usize;
    let mut puts: Vec<Put> = Vec::new();
    let mut put_bytes = 0usize;
    let bytes_max = store.config().http.json_body_bytes_max;
    let append_max = store.events().limits().append_events_max;
    let enqueue_max = store.queues().limits().enqueue_batch_max;
    // Streams' retention as the file sets it: older events are skipped, as expired values are.
    let mut retention: std::collections::HashMap<String, u64> = Default::default();
    // Queues whose max_depth is set once their jobs are in: (line, name, config).
    let mut bounded: Vec<(u64, String, QueueConfig)> = Vec::new();
    let now = store.engine().now_ms();

    while next_line(input, &mut buf)?.is_some() {
        let line = shape.line(&buf)?;
        let lineno = shape.lines;
        progress.inc(1);
        let size = buf.len();
        // A line of another kind (or another stream or queue), a full group, or a dead job
        // (skipped: it must not shift the line numbers of a group) ends the pending group.
        let same_group = match (&pending, &line) {
            (Pending::None, _) => true,
            (Pending::Events(s, v, _), Line::Event(e)) => s == &e.stream && v.len() < append_max,
            (Pending::Jobs(q, v, _), Line::Job(j)) => {
                q == &j.queue && v.len() < enqueue_max && j.state != "dead"
            }
            _ => false,
        };
        if !same_group || pending_bytes + size > bytes_max {
            flush(store, &mut pending).await?;
            pending_bytes = 0;
        }
        if (!matches!(line, Line::Kv(_)) && !puts.is_empty()) || put_bytes + size > bytes_max {
            flush_puts(store, &mut puts).await?;
            put_bytes = 0;
        }
        match line {
            Line::Header(_) | Line::End(_) => {}
            Line::Kv(kv) => {
                let bytes = kv_value(&kv).map_err(|e| format!("line {lineno}: {e}"))?;
                let ttl_ms = match kv.expires_at_ms {
                    Some(at) if at <= now => {
                        n.expired_skipped += 1;
                        continue;
                    }
                    Some(at) => Some(at - now),
                    None => None,
                };
                let opts = PutOptions {
                    ttl_ms,
                    content_type: kv.content_type,
                    ..PutOptions::default()
                };
                puts.push((lineno, kv.ns, kv.key, bytes, opts));
                put_bytes += size;
                n.kv += 1;
            }
            Line::Stream(s) => {
                store
                    .events()
                    .configure(&s.name, Some(s.bucket_ms), Some(s.retention_ms))
                    .await
                    .map_err(|e| format!("line {lineno}: stream {}: {e}", s.name))?;
                retention.insert(s.name, s.retention_ms);
                n.streams += 1;
            }
            Line::Event(e) => {
                let keep = retention.get(&e.stream).copied().unwrap_or(0);
                if keep > 0 && e.ts < now.saturating_sub(keep) {
                    // Ends the group, so its line numbers hold.
                    flush(store, &mut pending).await?;
                    pending_bytes = 0;
                    n.expired_skipped += 1;
                    continue;
                }
                let ev = NewEvent {
                    ts: Some(e.ts),
                    kind: e.kind,
                    data: e.data.get().as_bytes().to_vec(),
                };
                match &mut pending {
                    Pending::Events(_, v, _) => v.push(ev),
                    p => *p = Pending::Events(e.stream, vec![ev], lineno),
                }
                pending_bytes += size;
                n.events += 1;
            }
            Line::Queue(q) => {
                let config = QueueConfig {
                    max_depth: q.max_depth,
                    default_lease_ms: q.default_lease_ms,
                    max_attempts: q.max_attempts,
                    backoff: q.backoff,
                };
                // Its jobs go in first with no depth bound (a max_depth lowered below the jobs
                // a queue holds must not stop the import); the bound is set after them.
                let open = QueueConfig {
                    max_depth: 0,
                    ..config
                };
                store
                    .queues()
                    .configure(&q.name, Some(open), Some(q.paused))
                    .await
                    .map_err(|e| format!("line {lineno}: queue {}: {e}", q.name))?;
                if q.max_depth > 0 {
                    bounded.push((lineno, q.name, config));
                }
                n.queues += 1;
            }
            Line::Job(j) => {
                let state = job_state(&j.state).map_err(|e| format!("line {lineno}: {e}"))?;
                if state == State::Dead {
                    n.dead_jobs_skipped += 1;
                    continue;
                }
                let job = NewJob {
                    payload: j.payload.get().as_bytes().to_vec(),
                    priority: j.priority,
                    run_at_ms: (state == State::Delayed).then_some(j.run_at_ms),
                    max_attempts: Some(j.max_attempts),
                    backoff: Some(j.backoff),
                    ..NewJob::default()
                };
                match &mut pending {
                    Pending::Jobs(_, v, _) => v.push(job),
                    p => *p = Pending::Jobs(j.queue, vec![job], lineno),
                }
                pending_bytes += size;
                n.jobs += 1;
            }
            Line::Schedule(s) => {
                let spec = ScheduleSpec {
                    cron: s.cron,
                    queue: s.queue,
                    payload: s.payload.get().as_bytes().to_vec(),
                    priority: s.priority,
                    max_attempts: s.max_attempts,
                };
                store
                    .queues()
                    .put_schedule(&s.name, spec)
                    .await
                    .map_err(|e| format!("line {lineno}: schedule {}: {e}", s.name))?;
                n.schedules += 1;
            }
        }
    }
    flush(store, &mut pending).await?;
    flush_puts(store, &mut puts).await?;
    for (line, name, config) in bounded {
        store
            .queues()
            .configure(&name, Some(config), None)
            .await
            .map_err(|e| format!("line {line}: queue {name}: {e}"))?;
    }
    shape
        .finish()
        .map_err(|e| format!("{e} (the file changed after it was verified?)"))?;
    progress.finish();
    Ok(n)
}
