//! The change feed: every committed change of every domain, in log (LSN) order, decoded from
//! the write-ahead log into what a user understands — a KV put, an event appended, a job
//! claimed — rather than table rows.
//!
//! Every batch's redo carries notes ([`note`]): one per operation, saying what the physical ops
//! after it mean. Each domain declares, next to its tables, how its notes and ops decode into
//! [`Change`]s ([`FeedSpec`] in its [`super::DomainSpec`]); [`decode_record`] walks a record and
//! hands each domain its part. A change's place is a [`Position`]: the store's generation, the
//! record's LSN and the change's index within the record.

pub mod cursors;
pub mod holds;
pub mod log;
pub mod note;
pub mod position;

pub use position::{Generation, Position};

use super::redo::{self, Op, ReplayError};
use super::shard_state::ShardState;
use super::wal::Wal;
use note::Note;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// One change, as the feed serves it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Change {
    /// `kv`, `events`, `queue` or `schedules`.
    pub domain: &'static str,
    /// What happened: `put`, `delete`, `appended`, `claimed`, …
    pub op: &'static str,
    /// The namespace, stream, queue or schedule it happened to.
    pub name: String,
    /// The rest, as the domain describes it (key, revision, value, id, …).
    #[serde(flatten)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl Change {
    pub fn new(domain: &'static str, op: &'static str, name: impl Into<String>) -> Change {
        Change {
            domain,
            op,
            name: name.into(),
            fields: serde_json::Map::new(),
        }
    }

    /// Adds a field.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Change {
        self.fields.insert(key.to_string(), value.into());
        self
    }
}

/// Decodes one operation of a domain — its note and the physical ops that follow it up to the
/// next note — into changes.
pub(crate) type DecodeFn = fn(&Note<'_>, &[Op<'_>], &mut Vec<Change>);

/// How a domain's notes and tables decode into changes.
pub struct FeedSpec {
    /// The domain byte of its notes (not 0: that is the batch's own).
    pub domain: u8,
    pub(crate) decode: DecodeFn,
}

/// A log record, decoded.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Record {
    /// When its batch was applied (ms since the epoch); `None` for a record written before the
    /// log carried notes.
    pub at_ms: Option<u64>,
    pub changes: Vec<Change>,
}

/// Decodes a redo payload into changes. Ops before any note, and a note of a domain none of
/// `specs` knows, decode to nothing (the engine's own `meta`, the cache's generations, kept
/// idempotency answers: not in the feed).
pub fn decode_record(specs: &[&FeedSpec], payload: &[u8]) -> Result<Record, ReplayError> {
    let ops = redo::ops(payload)?;
    let mut record = Record::default();
    let mut group: Option<(Note<'_>, usize)> = None;
    let flush = |group: Option<(Note<'_>, usize)>, end: usize, out: &mut Vec<Change>| {
        if let Some((note, start)) = group {
            if let Some(spec) = specs.iter().find(|s| s.domain == note.domain) {
                (spec.decode)(&note, &ops[start..end], out);
            }
        }
    };
    for (i, op) in ops.iter().enumerate() {
        let Op::Note(bytes) = op else { continue };
        let Some(note) = Note::parse(bytes) else {
            continue;
        };
        if note.domain == note::BATCH {
            record.at_ms = note.args().u64();
            continue;
        }
        flush(group.take(), i, &mut record.changes);
        group = Some((note, i + 1));
    }
    flush(group, ops.len(), &mut record.changes);
    Ok(record)
}

/// Records whose commit failed after they were logged (an `Abort` cancels them): the feed
/// passes over them. Filled by recovery and by a writer whose commit fails.
#[derive(Debug, Default)]
pub struct Aborted(Mutex<HashSet<(u32, u64)>>);

impl Aborted {
    pub fn new(known: HashSet<(u32, u64)>) -> Aborted {
        Aborted(Mutex::new(known))
    }
    /// Adds one, and lets go of those the log no longer holds (older than `oldest`, its first
    /// record still on disk): no reader can meet them again, so the set stays within the
    /// aborts of the retained log. Each shard's newest abort is kept whatever its age: the
    /// feed's end asks about a shard's last logged record, which may be it.
    pub fn insert(&self, shard: u32, lsn: u64, oldest: Option<u64>) {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        set.insert((shard, lsn));
        if let Some(oldest) = oldest {
            let mut newest: HashMap<u32, u64> = HashMap::new();
            for (s, l) in set.iter() {
                let n = newest.entry(*s).or_insert(*l);
                *n = (*n).max(*l);
            }
            set.retain(|(s, l)| *l >= oldest || newest.get(s) == Some(l));
        }
    }

    pub fn contains(&self, shard: u32, lsn: u64) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(shard, lsn))
    }
}

/// Which changes a reader wants: some domains, and within a domain names with a prefix.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `None`: every domain.
    pub domains: Option<Vec<String>>,
    /// (domain, name prefix): a change of that domain passes only with a name starting so.
    pub prefixes: Vec<(String, String)>,
}

impl Filter {
    pub fn passes(&self, c: &Change) -> bool {
        if let Some(d) = &self.domains {
            if !d.iter().any(|d| d == c.domain) {
                return false;
            }
        }
        self.prefixes
            .iter()
            .filter(|(d, _)| d == c.domain)
            .all(|(_, p)| c.name.starts_with(p.as_str()))
    }
}

/// A change with its place.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub position: Position,
    /// When its batch was applied (ms since the epoch), when the record says.
    pub at_ms: Option<u64>,
    pub change: Change,
}

impl Entry {
    /// The change as one JSON object (a feed line, SSE data, a sink's message): position and
    /// time first, then domain, op and name, then the domain's fields.
    pub fn json_line(&self) -> Vec<u8> {
        let e = self;
    use std::io::Write as _;
    let mut out = Vec::with_capacity(160);
    // Writing to a Vec cannot fail; serde_json writes valid JSON for every Value.
    let _ = write!(
        out,
        "{{\"position\":\"{}\",\"at_ms\":{},\"domain\":\"{}\",\"op\":\"{}\",\"name\":",
        e.position,
        e.at_ms.map_or("null".to_string(), |t| t.to_string()),
        e.change.domain,
        e.change.op,
    );
    let _ = serde_json::to_writer(&mut out, &e.change.name);
    for (k, v) in &e.change.fields {
        out.push(b',');
        let _ = serde_json::to_writer(&mut out, k);
        out.push(b':');
        let _ = serde_json::to_writer(&mut out, v);
    }
    out.push(b'}');
    out
}
}

/// What a read gave: the changes that passed the filter, and where the next read starts (past
/// everything looked at, filtered out or not).
#[derive(Debug, Clone)]
pub struct Page {
    pub entries: Vec<Entry>,
    pub next: Position,
}

/// Why a read cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedError {
    /// The position is of another history (a restore, an import): `ours` is this store's.
    OtherGeneration { ours: Generation },
    /// The log no longer holds the changes after the position: take a snapshot (an export) and
    /// read on from the position it names. `oldest` is the oldest position still held.
    Gone { oldest: Option<Position> },
    /// The position is ahead of the log.
    Ahead { last: Position },
    NoSuchCursor(String),
    /// A request the feed refuses (a cursor moved back, too many cursors).
    Invalid(String),
    Log(String),
}

/// Records read per read call, at most.
const RECORDS_PER_READ: usize = 4096;
/// Payload bytes read per read call, about.
const BYTES_PER_READ: usize = 4 << 20;

/// The feed over an engine's log.
pub struct Feed {
    pub(crate) generation: Arc<position::GenerationCell>,
    /// Where this generation came from, when it continues another ([`position::Lineage`]).
    pub(crate) lineage: std::sync::Mutex<Option<position::Lineage>>,
    /// On a standby, the last copied record applied in order (`u64::MAX` on a primary): the
    /// feed's end never passes it (records copied into the log are not in the shards yet).
    pub(crate) standby_applied: std::sync::atomic::AtomicU64,
    pub(crate) wal: Arc<Wal>,
    pub(crate) specs: Vec<&'static FeedSpec>,
    pub(crate) shards: Vec<Arc<ShardState>>,
    pub(crate) aborted: Arc<Aborted>,
    pub holds: Arc<holds::Holds>,
    /// The named cursors ([`cursors`]).
    pub cursors: Arc<cursors::Cursors>,
    /// The LSN of the latest commit (any shard): followers wait on it.
    pub(crate) committed: tokio::sync::watch::Receiver<u64>,
    /// Where reads ended lately, so the next read from there starts there.
    pub(crate) hints: log::Hints,
}

struct Visible<'a>(&'a Feed);

impl log::Visibility for Visible<'_> {
    fn committed(&self, shard: u32, lsn: u64) -> bool {
        self.0
            .shards
            .get(shard as usize)
            .is_some_and(|s| s.committed_lsn.load(std::sync::atomic::Ordering::Acquire) >= lsn)
    }
    fn aborted(&self, shard: u32, lsn: u64) -> bool {
        self.0.aborted.contains(shard, lsn)
    }
}

impl Feed {
    /// The store's generation.
    pub fn generation(&self) -> Generation {
        self.generation.get()
    }

    /// The generation this one continues, and up to which record ([`position::Lineage`]).
    pub fn lineage(&self) -> Option<position::Lineage> {
        *self.lineage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The position after every change committed so far: the log's acknowledged mark, or
    /// before the first record a shard has logged but not yet committed (each shard has at
    /// most one: its writer commits a batch before it logs the next). Everything up to it is
    /// in the shards, so a snapshot read after taking it (an export) holds all of it.
    pub fn end(&self) -> Position {
        use std::sync::atomic::Ordering::{Acquire, SeqCst};
        let ack = self.horizon();
        let mut end = ack;
        for (i, s) in self.shards.iter().enumerate() {
            // A record being appended: its LSN is above the floor (and may be acknowledged
            // before the writer knows it).
            let floor = s.appending_floor.load(SeqCst);
            if floor != 0 {
                end = end.min(floor - 1);
            }
            let logged = s.logged_lsn.load(SeqCst);
            if logged > 0
                && logged <= ack
                && s.committed_lsn.load(Acquire) < logged
                && !self.aborted.contains(i as u32, logged)
            {
                end = end.min(logged - 1);
            }
        }
        let applied = self.standby_applied.load(Acquire);
        if applied != u64::MAX {
            end = end.min(applied);
        }
        Position::after_record(self.generation(), end)
    }

    /// The last record the feed may show: a durable one (in periodic mode, records written but
    /// not yet synced are acknowledged to clients, but a crash would lose them and their LSNs
    /// be used again: a reader must never have seen them).
    fn horizon(&self) -> u64 {
        self.wal.durable_lsn()
    }

    /// The oldest position the log still holds (before its oldest record).
    pub fn oldest(&self) -> Option<Position> {
        self.wal
            .oldest_lsn()
            .map(|l| Position::after_record(self.generation(), l.saturating_sub(1)))
    }

    /// A receiver that changes whenever a batch commits (followers wait on it).
    pub fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.committed.clone()
    }

    /// The horizon a read from `after` may go to: refused for a position of another history or
    /// past this box's log.
    fn horizon_for(&self, after: Position) -> Result<u64, FeedError> {
        if after.generation != self.generation() {
            return Err(FeedError::OtherGeneration {
                ours: self.generation(),
            });
        }
        let horizon = self.horizon();
        if after.lsn > horizon {
            return Err(FeedError::Ahead { last: self.end() });
        }
        Ok(horizon)
    }

    /// A read the log could not serve, as the feed's error.
    fn read_failed(&self, e: log::ReadError) -> FeedError {
        match e {
            log::ReadError::Gone { oldest } => FeedError::Gone {
                oldest: oldest
                    .map(|l| Position::after_record(self.generation(), l.saturating_sub(1))),
            },
            log::ReadError::Io(m) => FeedError::Log(m),
        }
    }

    /// Up to `max` changes after `after` that pass `filter`, in order.
    pub fn read(&self, after: Position, max: usize, filter: &Filter) -> Result<Page, FeedError> {
        self.read_until(after, max, filter, u64::MAX)
    }

    /// As [`Feed::read`], of the records up to `until` only (a reader held behind another).
    pub fn read_until(
        &self,
        after: Position,
        max: usize,
        filter: &Filter,
        until: u64,
    ) -> Result<Page, FeedError> {
        let horizon = self.horizon_for(after)?.min(until);
        // A position inside a record reads that record again for its later changes.
        let from = if after.index == Position::WHOLE_RECORD {
            after.lsn
        } else {
            after.lsn.saturating_sub(1)
        };
        let mut page = Page {
            entries: Vec::new(),
            next: after,
        };
        if from >= horizon {
            return Ok(page);
        }
        let records = log::read_after(
            &self.wal,
            from,
            horizon,
            log::Want {
                max_records: RECORDS_PER_READ.min(max.max(1)),
                max_bytes: BYTES_PER_READ,
                which: log::Records::Committed,
            },
            &Visible(self),
            &self.hints,
        )
        .map_err(|e| self.read_failed(e))?;
        for r in &records {
            let decoded = decode_record(&self.specs, &r.payload)
                .map_err(|e| FeedError::Log(format!("record {}: {e}", r.lsn)))?;
            for (i, change) in decoded.changes.into_iter().enumerate() {
                let position = Position {
                    generation: self.generation(),
                    lsn: r.lsn,
                    index: i as u32,
                };
                if !after.is_before(r.lsn, i as u32) {
                    continue;
                }
                page.next = position;
                if filter.passes(&change) {
                    page.entries.push(Entry {
                        position,
                        at_ms: decoded.at_ms,
                        change,
                    });
                    if page.entries.len() >= max {
                        return Ok(page);
                    }
                }
            }
            page.next = Position::after_record(self.generation(), r.lsn);
        }
        Ok(page)
    }

    /// Up to `max` records of the log after `after` (the record it names is taken as shipped),
    /// every kind, each once it is decided, as the frames the log holds them in: consecutive
    /// LSNs, what a copy of the log elsewhere needs ([`crate::store::sink`]'s log stream, the
    /// restore that replays it). Returns them and the position after the last.
    pub fn read_records(
        &self,
        after: Position,
        max: usize,
    ) -> Result<(Vec<LogRecord>, Position), FeedError> {
        let horizon = self.horizon_for(after)?;
        if after.lsn == horizon {
            return Ok((Vec::new(), after));
        }
        let records = log::read_after(
            &self.wal,
            after.lsn,
            horizon,
            log::Want {
                max_records: RECORDS_PER_READ.min(max.max(1)),
                max_bytes: BYTES_PER_READ,
                which: log::Records::All,
            },
            &Visible(self),
            &self.hints,
        )
        .map_err(|e| self.read_failed(e))?;
        let next = records
            .last()
            .map_or(after, |r| Position::after_record(self.generation(), r.lsn));
        let frames = records
            .into_iter()
            .map(|r| {
                let mut frame = Vec::with_capacity(crate::engine::wal::frame::frame_len(r.payload.len()));
                crate::engine::wal::frame::encode_with_crc(
                    &mut frame, r.lsn, r.shard, r.kind, &r.payload, r.crc,
                );
                LogRecord { lsn: r.lsn, frame }
            })
            .collect();
        Ok((frames, next))
    }
}

/// One record of the log as it is framed there ([`Feed::read_records`]).
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub lsn: u64,
    pub frame: Vec<u8>,
}

/// A byte string as JSON: the text when it is UTF-8 (with `"<field>_encoding":"utf8"`), else
/// base64 (`"base64"`), so any stored bytes can travel in a JSON change.
pub fn bytes_field(change: Change, field: &str, bytes: &[u8]) -> Change {
    use base64::Engine as _;
    match std::str::from_utf8(bytes) {
        Ok(text) => change
            .with(field, text)
            .with(&format!("{field}_encoding"), "utf8"),
        Err(_) => change
            .with(
                field,
                base64::engine::general_purpose::STANDARD.encode(bytes),
            )
            .with(&format!("{field}_encoding"), "base64"),
    }
}

/// JSON text as a JSON value (event data and job payloads are checked JSON when written);
/// other bytes as [`bytes_field`] writes them.
pub fn json_field(change: Change, field: &str, bytes: &[u8]) -> Change {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(v) => change.with(field, v),
        Err(_) => bytes_field(change, field, bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::redo::Redo;

    #[test]
    fn aborts_the_log_let_go_of_are_forgotten() {
        let a = Aborted::default();
        a.insert(0, 5, None);
        a.insert(1, 7, Some(1));
        assert!(a.contains(0, 5) && a.contains(1, 7));
        // The log's oldest record is now 10: 5 can never be read again; 7 is shard 1's newest
        // abort (the feed's end may ask about it), so it stays.
        a.insert(0, 20, Some(10));
        assert!(!a.contains(0, 5) && a.contains(1, 7) && a.contains(0, 20));
        a.insert(1, 30, Some(25));
        assert!(!a.contains(1, 7) && a.contains(1, 30) && a.contains(0, 20));
    }

    fn decode_test(note: &Note<'_>, ops: &[Op<'_>], out: &mut Vec<Change>) {
        for op in ops {
            if let Op::Put { key, .. } = op {
                out.push(
                    Change::new("kv", "put", format!("n{}", note.verb))
                        .with("key", String::from_utf8_lossy(key).into_owned()),
                );
            }
        }
    }

    #[test]
    fn a_record_decodes_by_its_notes() {
        let spec = FeedSpec {
            domain: 9,
            decode: decode_test,
        };
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("db")).unwrap();
        let redo = std::cell::RefCell::new(Redo::default());
        let txn = db.begin_write().unwrap();
        let cache = crate::engine::redo::TableCache::default();
        let t: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("t");
        redo.borrow_mut().note(&note::batch_time(77));
        {
            let mut table =
                crate::engine::redo::LoggedTable::open(&txn, &redo, &cache, t).unwrap();
            // Before any note: nobody's.
            table.insert(b"orphan".as_slice(), b"x".as_slice()).unwrap();
            redo.borrow_mut()
                .note(note::NoteBuf::new(9, 1).bytes());
            table.insert(b"a".as_slice(), b"1".as_slice()).unwrap();
            table.insert(b"b".as_slice(), b"1".as_slice()).unwrap();
            // A domain nobody decodes.
            redo.borrow_mut()
                .note(note::NoteBuf::new(3, 1).bytes());
            table.insert(b"c".as_slice(), b"1".as_slice()).unwrap();
            redo.borrow_mut()
                .note(note::NoteBuf::new(9, 2).bytes());
            table.insert(b"d".as_slice(), b"1".as_slice()).unwrap();
        }
        drop(cache);
        txn.commit().unwrap();
        let r = decode_record(&[&spec], redo.borrow().bytes()).unwrap();
        assert_eq!(r.at_ms, Some(77));
        let got: Vec<(String, String)> = r
            .changes
            .iter()
            .map(|c| (c.name.clone(), c.fields["key"].as_str().unwrap().to_string()))
            .collect();
        assert_eq!(
            got,
            [("n1", "a"), ("n1", "b"), ("n2", "d")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }
}
