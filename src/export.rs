//! `shardbox export` / `import`: every KV value, stream, event, queue, job and schedule as
//! NDJSON, one object per line — the portable format for moving data to another system (or
//! another shardbox). Unlike a backup it is readable, editable and independent of redb and of
//! the shard count; like a backup it is read from read transactions, so it can run against a
//! live server (`GET /v1/admin/export`).
//!
//! Format (version 1), in this order:
//!
//! ```text
//! {"type":"header","format":"shardbox-export","version":1,"exported_at_ms":…}
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
use crate::progress::Progress;
use crate::queue::model::{Backoff, Job as StoredJob, QueueConfig, State};
use crate::queue::schedules::ScheduleSpec;
use crate::queue::NewJob;
use crate::Store;
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
    #[derive(Deserialize)]
    struct Tag {
        #[serde(rename = "type")]
        kind: String,
    }
    let e = |e: serde_json::Error| e.to_string();
    let tag: Tag = serde_json::from_slice(bytes).map_err(e)?;
    Ok(match tag.kind.as_str() {
        "header" => Line::Header(serde_json::from_slice(bytes).map_err(e)?),
        "kv" => Line::Kv(serde_json::from_slice(bytes).map_err(e)?),
        "stream" => Line::Stream(serde_json::from_slice(bytes).map_err(e)?),
        "event" => Line::Event(serde_json::from_slice(bytes).map_err(e)?),
        "queue" => Line::Queue(serde_json::from_slice(bytes).map_err(e)?),
        "job" => Line::Job(serde_json::from_slice(bytes).map_err(e)?),
        "schedule" => Line::Schedule(serde_json::from_slice(bytes).map_err(e)?),
        "end" => Line::End(serde_json::from_slice(bytes).map_err(e)?),
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
}

fn raw(what: &str, json: Vec<u8>) -> Result<Box<RawValue>, String> {
    String::from_utf8(json)
        .ok()
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
            let (batch, more) = events.range(&s.name, &q).map_err(|e| err(&e))?;
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

/// Parses every line of `input` and checks the header and the `end` count; writes nothing.
/// Returns the number of records.
pub fn verify(input: &mut dyn BufRead) -> Result<u64, String> {
    let mut buf = Vec::new();
    let mut n: u64 = 0;
    let mut ended = false;
    while next_line(input, &mut buf)?.is_some() {
        n += 1;
        if buf.iter().all(u8::is_ascii_whitespace) {
            return Err(format!("line {n}: empty"));
        }
        if ended {
            return Err(format!("line {n}: data after the end line"));
        }
        let line = parse_line(&buf).map_err(|e| format!("line {n}: {e}"))?;
        match line {
            Line::Header(Header {
                format, version, ..
            }) if n == 1 && (format != FORMAT || version != VERSION) => {
                return Err(format!(
                    "line 1: a {format} version {version} file; this shardbox reads {FORMAT} version {VERSION}"
                ));
            }
            Line::Header(_) if n == 1 => {}
            _ if n == 1 => return Err("line 1: not a shardbox export header".into()),
            Line::Header(Header { .. }) => return Err(format!("line {n}: a second header")),
            Line::End(End { lines }) => {
                if lines != n {
                    return Err(format!(
                        "line {n}: the end line counts {lines} lines, the file has {n}"
                    ));
                }
                ended = true;
            }
            _ => {}
        }
    }
    if !ended {
        return Err(format!(
            "the file ends after {n} lines without its end line: it is truncated; nothing was imported"
        ));
    }
    Ok(n.saturating_sub(2))
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

/// Imports a file that [`verify`] accepted (reading it again from the start). Stops at the
/// first record the store refuses, naming its line; what came before it stays imported.
pub async fn import(
    store: &Store,
    input: &mut dyn BufRead,
    progress: &Progress,
) -> Result<Counts, String> {
    use futures_util::StreamExt;
    let mut n = Counts::default();
    let mut buf = Vec::new();
    let mut lineno: u64 = 0;
    let mut pending = Pending::None;
    let mut puts: Vec<(u64, String, String, Vec<u8>, PutOptions)> = Vec::new();
    let append_max = store.events().limits().append_events_max;
    let enqueue_max = store.queues().limits().enqueue_batch_max;
    let now = store.engine().now_ms();

    // Puts run concurrently so the shard writers can commit them in groups.
    async fn flush_puts(
        store: &Store,
        puts: &mut Vec<(u64, String, String, Vec<u8>, PutOptions)>,
    ) -> Result<(), String> {
        let kv = store.kv();
        let mut results = futures_util::stream::iter(puts.drain(..).map(
            |(line, ns, key, value, opts)| async move {
                kv.put(&ns, &key, value, opts)
                    .await
                    .map_err(|e| format!("line {line}: kv {ns}/{key}: {e}"))
            },
        ))
        .buffer_unordered(256);
        while let Some(r) = results.next().await {
            r?;
        }
        Ok(())
    }
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

    while next_line(input, &mut buf)?.is_some() {
        lineno += 1;
        let line = parse_line(&buf).map_err(|e| format!("line {lineno}: {e}"))?;
        // A line of another kind (or another stream or queue) ends the pending group.
        let same_group = match (&pending, &line) {
            (Pending::Events(s, v, _), Line::Event(Event { stream, .. })) => {
                s == stream && v.len() < append_max
            }
            (Pending::Jobs(q, v, _), Line::Job(Job { queue, .. })) => {
                q == queue && v.len() < enqueue_max
            }
            (Pending::None, _) => true,
            _ => false,
        };
        if !same_group {
            flush(store, &mut pending).await?;
        }
        if !matches!(line, Line::Kv(Kv { .. })) && !puts.is_empty() {
            flush_puts(store, &mut puts).await?;
        }
        match line {
            Line::Header(Header { .. }) | Line::End(End { .. }) => {}
            Line::Kv(Kv {
                ns,
                key,
                value,
                value_b64,
                content_type,
                expires_at_ms,
            }) => {
                let bytes = match (value, value_b64) {
                    (Some(v), None) => v.into_bytes(),
                    (None, Some(b)) => base64::engine::general_purpose::STANDARD
                        .decode(b)
                        .map_err(|e| format!("line {lineno}: value_b64: {e}"))?,
                    _ => {
                        return Err(format!(
                            "line {lineno}: a kv line needs exactly one of value and value_b64"
                        ))
                    }
                };
                let ttl_ms = match expires_at_ms {
                    Some(at) if at <= now => continue, // expired since the export
                    Some(at) => Some(at - now),
                    None => None,
                };
                let opts = PutOptions {
                    ttl_ms,
                    content_type,
                    ..PutOptions::default()
                };
                puts.push((lineno, ns, key, bytes, opts));
                n.kv += 1;
                if puts.len() >= 4096 {
                    flush_puts(store, &mut puts).await?;
                }
            }
            Line::Stream(Stream {
                name,
                bucket_ms,
                retention_ms,
            }) => {
                store
                    .events()
                    .configure(&name, Some(bucket_ms), Some(retention_ms))
                    .await
                    .map_err(|e| format!("line {lineno}: stream {name}: {e}"))?;
                n.streams += 1;
            }
            Line::Event(Event {
                stream,
                ts,
                kind,
                data,
                ..
            }) => {
                let e = NewEvent {
                    ts: Some(ts),
                    kind,
                    data: data.get().as_bytes().to_vec(),
                };
                match &mut pending {
                    Pending::Events(_, v, _) => v.push(e),
                    p => *p = Pending::Events(stream, vec![e], lineno),
                }
                n.events += 1;
            }
            Line::Queue(Queue {
                name,
                paused,
                max_depth,
                default_lease_ms,
                max_attempts,
                backoff,
            }) => {
                let config = QueueConfig {
                    max_depth,
                    default_lease_ms,
                    max_attempts,
                    backoff,
                };
                store
                    .queues()
                    .configure(&name, Some(config), Some(paused))
                    .await
                    .map_err(|e| format!("line {lineno}: queue {name}: {e}"))?;
                n.queues += 1;
            }
            Line::Job(Job {
                queue,
                state,
                payload,
                priority,
                run_at_ms,
                max_attempts,
                backoff,
                ..
            }) => {
                let state = State::parse(&state).ok_or_else(|| {
                    format!(
                        "line {lineno}: state `{state}`: one of ready, delayed, in_flight, dead"
                    )
                })?;
                if state == State::Dead {
                    n.dead_jobs_skipped += 1;
                    continue;
                }
                let job = NewJob {
                    payload: payload.get().as_bytes().to_vec(),
                    priority,
                    run_at_ms: (state == State::Delayed).then_some(run_at_ms),
                    max_attempts: Some(max_attempts),
                    backoff: Some(backoff),
                    ..NewJob::default()
                };
                match &mut pending {
                    Pending::Jobs(_, v, _) => v.push(job),
                    p => *p = Pending::Jobs(queue, vec![job], lineno),
                }
                n.jobs += 1;
            }
            Line::Schedule(Schedule {
                name,
                cron,
                queue,
                payload,
                priority,
                max_attempts,
            }) => {
                let spec = ScheduleSpec {
                    cron,
                    queue,
                    payload: payload.get().as_bytes().to_vec(),
                    priority,
                    max_attempts,
                };
                store
                    .queues()
                    .put_schedule(&name, spec)
                    .await
                    .map_err(|e| format!("line {lineno}: schedule {name}: {e}"))?;
                n.schedules += 1;
            }
        }
        progress.inc(1);
    }
    flush(store, &mut pending).await?;
    flush_puts(store, &mut puts).await?;
    progress.finish();
    Ok(n)
}
