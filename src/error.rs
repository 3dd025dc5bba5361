//! Error enums of every layer, and the one function that maps them to HTTP statuses and the
//! JSON body `{"error":{"code":"…","message":"…"}}`.

use crate::names::{KEY_BYTES_MAX, NAME_BYTES_MAX};
use crate::util::JSON_DEPTH_MAX;
use std::fmt;

/// Errors of the storage engine (shards, writers, codec, data directory).
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// redb reported an I/O or storage failure. The shard stops accepting writes.
    #[error("shard {shard}: storage error: {message}")]
    Storage { shard: usize, message: String },
    /// The shard refuses writes since an earlier storage failure.
    #[error("shard {shard} is not accepting writes: {reason}")]
    ShardUnavailable { shard: usize, reason: String },
    /// The shard's writer queue stayed full for the whole wait.
    #[error("shard {shard} is overloaded: its writer queue is full")]
    Overloaded { shard: usize },
    /// The store is shutting down and accepts no more writes.
    #[error("shardbox is shutting down")]
    ShuttingDown,
    /// A stored record failed its checksum or could not be decoded.
    #[error("shard {shard}: record for key {key:?} is corrupt: {detail}")]
    Corrupt {
        shard: usize,
        key: String,
        detail: String,
    },
    /// The disk under the data directory is (nearly) full: the write was not applied.
    #[error("{message}")]
    InsufficientStorage { message: String },
    /// The data directory cannot be opened as asked (manifest mismatch, in use, bad files).
    #[error("{0}")]
    Open(String),
}

/// Input a domain refuses, with the facts of what was wrong: every domain error carries it as
/// its `Invalid` variant, and the HTTP layer answers it with 400 `bad_request` and its text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// A name (`what`: "namespace", "queue name", …) outside 1–[`NAME_BYTES_MAX`] bytes.
    #[error("{what} must be 1-{max} characters, got {len}", max = NAME_BYTES_MAX)]
    NameLength { what: &'static str, len: usize },
    /// A name that is `.` or `..`.
    #[error("{what} {name:?} is a path step: URL-normalising clients could never address it")]
    NamePathStep { what: &'static str, name: String },
    /// A name with a character outside `[A-Za-z0-9_.-]`.
    #[error("{what} {name:?} contains {ch:?}; use only A-Z a-z 0-9 _ . -")]
    NameChar {
        what: &'static str,
        name: String,
        ch: char,
    },
    /// A key outside 1–[`KEY_BYTES_MAX`] bytes.
    #[error("key must be 1-{max} bytes, got {len}", max = KEY_BYTES_MAX)]
    KeyLength { len: usize },
    #[error("ttl must be greater than zero")]
    TtlZero,
    /// A TTL past [`crate::util::DURATION_MS_MAX`].
    #[error("ttl of {ms} ms is too long: at most 100 years")]
    TtlTooLong { ms: u64 },
    /// A cache write without a TTL while no default TTL is configured.
    #[error("ttl is required (e.g. ?ttl=60s); no cache_default_ttl_ms is configured")]
    TtlRequired,
    /// `got` `items` where the `setting` allows at most `max` per `per`.
    #[error("{got} {items}; at most {max} per {per} ({setting})")]
    TooMany {
        items: &'static str,
        got: usize,
        max: usize,
        per: &'static str,
        setting: &'static str,
    },
    /// More than `max` `items` per `per`.
    #[error("at most {max} {items} per {per}")]
    AtMost {
        items: &'static str,
        max: usize,
        per: &'static str,
    },
    /// A request that `verb`s (enqueues, appends) `got` `items`, outside 1–`max`.
    #[error("a request {verb} 1-{max} {items}, got {got}")]
    RequestSize {
        verb: &'static str,
        items: &'static str,
        max: usize,
        got: usize,
    },
    /// A number outside `min`–`max` (`limit`, `max`, `priority`).
    #[error("{field} must be {min}-{max}")]
    OutOfRange {
        field: &'static str,
        min: u64,
        max: u64,
    },
    /// A text outside `min`–`max` bytes.
    #[error("{field} must be {min}-{max} bytes")]
    Length {
        field: &'static str,
        min: usize,
        max: usize,
    },
    /// A text longer than `max` bytes.
    #[error("{field} must be at most {max} bytes")]
    TooLong { field: &'static str, max: usize },
    #[error("content type is {len} bytes; at most {max}")]
    ContentTypeLength { len: usize, max: usize },
    /// A content type that no HTTP header can carry (it could never be served back).
    #[error("content type must be visible ASCII (no control characters)")]
    ContentTypeChars,
    /// A duration outside 1 ms–`max_ms`.
    #[error("{field} must be between 1 ms and {max_ms} ms")]
    DurationRange { field: &'static str, max_ms: u64 },
    /// A duration longer than `max_ms`.
    #[error("{field} must be at most {max_ms} ms")]
    DurationTooLong { field: &'static str, max_ms: u64 },
    /// A KV listing cursor that is not one this server handed out.
    #[error("`after` must be a cursor returned by a previous listing")]
    BadCursor,
    /// A job listing cursor that is not one of a listing of the same state.
    #[error("`after` must be a cursor from a previous listing of this state")]
    BadStateCursor,
    /// Stored JSON (`what`: "payload", "data") that does not parse.
    #[error("{what} is not valid JSON: {detail}")]
    Json { what: &'static str, detail: String },
    /// Stored JSON nested deeper than [`JSON_DEPTH_MAX`].
    #[error("{what} is nested {depth} levels deep; at most {max} are accepted", max = JSON_DEPTH_MAX)]
    JsonDepth { what: &'static str, depth: usize },
    /// A cron expression the parser refused (its message names the field and the fault).
    #[error("{0}")]
    Cron(String),
    #[error("there are already {count} schedules (schedules_max)")]
    ScheduleLimit { count: usize },
    #[error("in-flight jobs cannot be purged; ack or nack them, or let their leases expire")]
    PurgeInFlight,
    #[error("bucket must be 1h, 1d, 7d or 30d, got `{got}`")]
    BucketWidth { got: String },
    #[error("type must be 1-64 bytes without control characters")]
    EventType,
    #[error("ts must be after the Unix epoch (at least 1)")]
    TsZero,
    #[error("timestamp {ts} is more than future_skew_max_ms ({skew_max_ms}) ahead of the server clock ({now})")]
    TsAhead { ts: u64, skew_max_ms: u64, now: u64 },
    #[error("timestamp {ts} is older than the stream's retention")]
    TsBeforeRetention { ts: u64 },
    #[error("need from < to and step > 0")]
    CountWindow,
    #[error("{steps} steps; at most {max} per query")]
    TooManySteps { steps: u64, max: u64 },
    #[error("tag must be 1-{max} bytes, got {len}")]
    TagLength { len: usize, max: usize },
    #[error("tag {tag:?} contains {ch:?}; use visible ASCII without commas")]
    TagChar { tag: String, ch: char },
    #[error("give at least one tag, or {{\"all\":true}}")]
    NoTags,
    /// Item `index` of a request's list (`ops[3]: …`, `job 3: …`, `event 3: …`).
    #[error("{}{error}", .kind.label(Some(*.index)))]
    Item {
        kind: ItemKind,
        index: usize,
        error: Box<Invalid>,
    },
}

impl Invalid {
    /// This error, as the one of item `index` of a request's list of `kind`.
    pub fn at(self, kind: ItemKind, index: usize) -> Invalid {
        Invalid::Item {
            kind,
            index,
            error: Box::new(self),
        }
    }
}

/// The list an [`Invalid::Item`] belongs to, which fixes how its index is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    /// A KV batch's `ops[i]`.
    Op,
    /// An enqueue's `job i`.
    Job,
    /// An append's `event i`.
    Event,
}

impl ItemKind {
    /// `ops[3]: `, `job 3: `, `event 3: `; nothing without an index (a message about the one
    /// item of a request).
    fn label(self, index: Option<usize>) -> String {
        match (self, index) {
            (_, None) => String::new(),
            (ItemKind::Op, Some(i)) => format!("ops[{i}]: "),
            (ItemKind::Job, Some(i)) => format!("job {i}: "),
            (ItemKind::Event, Some(i)) => format!("event {i}: "),
        }
    }
}

/// Why a conditional KV write was refused (412).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// `If-Match` named another revision than the live one.
    RevisionMismatch { have: u64, want: u64 },
    /// The key is absent or expired; `expected` is the revision `If-Match` named, if any.
    Missing { expected: Option<u64> },
    /// `If-None-Match: *`, but the key exists.
    Exists { have: u64 },
    /// A batch operation's `if_revision` on a key an earlier operation of the batch wrote.
    WrittenInBatch,
}

impl fmt::Display for Precondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Precondition::RevisionMismatch { have, want } => {
                write!(f, "revision is {have}, not {want}")
            }
            Precondition::Missing {
                expected: Some(want),
            } => write!(f, "key does not exist (expected revision {want})"),
            Precondition::Missing { expected: None } => f.write_str("key does not exist"),
            Precondition::Exists { have } => write!(f, "key exists with revision {have}"),
            Precondition::WrittenInBatch => f.write_str("key was written earlier in this batch"),
        }
    }
}

/// Errors of the KV domain.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KvError {
    #[error("key not found")]
    NotFound,
    #[error("precondition failed: {0}")]
    PreconditionFailed(Precondition),
    #[error("the key holds a value that is not an integer counter")]
    NotACounter,
    #[error("counter overflow: {value} + {by} does not fit in a signed 64-bit integer")]
    Overflow { value: i64, by: i64 },
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// A value over `value_bytes_max` (`op`: its index in a batch).
    #[error("{}value is {len} bytes; the limit (value_bytes_max) is {max}", ItemKind::Op.label(*.op))]
    TooLarge {
        op: Option<usize>,
        len: usize,
        max: usize,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Errors of the queue domain.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("job {0} not found")]
    JobNotFound(u64),
    #[error("lease token is not current for job {0}: its lease expired or it was claimed again")]
    StaleLease(u64),
    #[error("job {0} is in flight; ack or nack it, or wait for its lease to expire")]
    InFlight(u64),
    #[error("queue is full: {depth} ready+delayed jobs, max_depth {max}")]
    Full { depth: u64, max: u64 },
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// A payload over `job_bytes_max` (`job`: its index in an enqueue).
    #[error("{}payload is {len} bytes; job_bytes_max is {max}", ItemKind::Job.label(*.job))]
    TooLarge {
        job: Option<usize>,
        len: usize,
        max: usize,
    },
    /// A stored record that does not decode (the decoder's message).
    #[error("queue record is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// The single mapping from queue errors to HTTP.
impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        let message = e.to_string();
        match e {
            QueueError::JobNotFound(_) => ApiError::not_found(message),
            QueueError::StaleLease(_) => ApiError::new(409, "stale_lease", message),
            QueueError::InFlight(_) => ApiError::new(409, "in_flight", message),
            QueueError::Full { .. } => ApiError {
                retry_after_s: Some(1),
                ..ApiError::new(429, "queue_full", message)
            },
            QueueError::Invalid(_) => ApiError::bad_request(message),
            QueueError::TooLarge { .. } => ApiError::too_large(message),
            QueueError::Corrupt(_) => ApiError::new(500, "corrupt_record", message),
            QueueError::Engine(e) => e.into(),
        }
    }
}

/// Errors of the events domain.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EventError {
    #[error("stream {0} does not exist")]
    StreamNotFound(String),
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// A configure asked for another bucket width than the one the stream was created with.
    #[error("the bucket width of stream {stream} is fixed at creation ({bucket_ms} ms); create a new stream to change it")]
    BucketFixed { stream: String, bucket_ms: u64 },
    /// Event `event`'s data is over `event_bytes_max`.
    #[error("event {event}: data is {len} bytes; event_bytes_max is {max}")]
    TooLarge {
        event: usize,
        len: usize,
        max: usize,
    },
    /// A stored record that does not decode (the decoder's message).
    #[error("event record is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// The single mapping from event errors to HTTP.
impl From<EventError> for ApiError {
    fn from(e: EventError) -> Self {
        let message = e.to_string();
        match e {
            EventError::StreamNotFound(_) => ApiError::not_found(message),
            EventError::Invalid(_) => ApiError::bad_request(message),
            EventError::BucketFixed { .. } => ApiError::new(409, "conflict", message),
            EventError::TooLarge { .. } => ApiError::too_large(message),
            EventError::Corrupt(_) => ApiError::new(500, "corrupt_record", message),
            EventError::Engine(e) => e.into(),
        }
    }
}

/// Which call brought a fill lease token that is no longer the key's live lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseUse {
    /// A write completing the fill: the value was not stored.
    Put,
    /// A report that the refresh failed.
    FillError,
}

impl LeaseUse {
    fn message(self) -> &'static str {
        match self {
            LeaseUse::Put => "this fill lease is no longer valid (it expired, the key was deleted, or another write landed first); the value was not stored",
            LeaseUse::FillError => "this fill lease is no longer valid (it expired, the key was deleted, or a value landed)",
        }
    }
}

/// Errors of the cache domain.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// A value over `cache_value_bytes_max`.
    #[error("value is {len} bytes; the cache takes at most {max} (cache_value_bytes_max)")]
    TooLarge { len: usize, max: usize },
    #[error("{}", .0.message())]
    LeaseInvalid(LeaseUse),
    /// The cache could not be opened or foyer failed.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Engine(EngineError),
}

/// The single mapping from cache errors to HTTP.
impl From<CacheError> for ApiError {
    fn from(e: CacheError) -> Self {
        let message = e.to_string();
        match e {
            CacheError::Invalid(_) => ApiError::bad_request(message),
            CacheError::TooLarge { .. } => ApiError::too_large(message),
            CacheError::LeaseInvalid(_) => ApiError::new(409, "fill_lease_invalid", message),
            CacheError::Unavailable(_) => ApiError::unavailable("cache_unavailable", message),
            CacheError::Engine(e) => e.into(),
        }
    }
}

/// Invalid input checked by the HTTP layer itself (names and keys before a domain is reached).
impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::bad_request(e.to_string())
    }
}

/// An error as the HTTP API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header on 429/503.
    pub retry_after_s: Option<u64>,
    /// Methods for an `Allow` header on 405.
    pub allow: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
            allow: None,
        }
    }
    /// A 500 for a failure the client cannot act on (a panic, a task that died); the details
    /// go to the server log, not the client.
    pub fn internal() -> Self {
        Self::new(
            500,
            "internal",
            "internal error while handling the request (see the server log)",
        )
    }
    /// A 500 for a task that died (panicked or was cancelled): the error is logged, not sent.
    pub fn task_failed(what: &str, e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "{what} failed");
        Self::internal()
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "bad_request", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found", message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(413, "payload_too_large", message)
    }
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            retry_after_s: Some(1),
            ..Self::new(503, code, message)
        }
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::json!({"error": {"code": self.code, "message": self.message}}).to_string()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

/// The single mapping from engine errors to HTTP.
impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let message = e.to_string();
        match e {
            EngineError::Storage { .. } => ApiError::new(500, "storage_error", message),
            EngineError::ShardUnavailable { .. } => {
                ApiError::unavailable("shard_unavailable", message)
            }
            EngineError::Overloaded { .. } => ApiError::unavailable("overloaded", message),
            EngineError::ShuttingDown => ApiError::unavailable("shutting_down", message),
            EngineError::Corrupt { .. } => ApiError::new(500, "corrupt_record", message),
            EngineError::Open(_) => ApiError::new(500, "internal", message),
            EngineError::InsufficientStorage { .. } => ApiError {
                retry_after_s: Some(5),
                ..ApiError::new(507, "insufficient_storage", message)
            },
        }
    }
}

/// The single mapping from KV errors to HTTP.
impl From<KvError> for ApiError {
    fn from(e: KvError) -> Self {
        let message = e.to_string();
        match e {
            KvError::NotFound => ApiError::not_found(message),
            KvError::PreconditionFailed(_) => ApiError::new(412, "precondition_failed", message),
            KvError::NotACounter => ApiError::new(409, "not_a_counter", message),
            KvError::Overflow { .. } => ApiError::new(409, "overflow", message),
            KvError::Invalid(_) => ApiError::bad_request(message),
            KvError::TooLarge { .. } => ApiError::too_large(message),
            KvError::Engine(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let s = |e: KvError| ApiError::from(e).status;
        assert_eq!(s(KvError::NotFound), 404);
        assert_eq!(
            s(KvError::PreconditionFailed(Precondition::Exists {
                have: 3
            })),
            412
        );
        assert_eq!(s(KvError::NotACounter), 409);
        assert_eq!(
            s(KvError::Engine(EngineError::Overloaded { shard: 1 })),
            503
        );
        assert_eq!(
            ApiError::from(CacheError::LeaseInvalid(LeaseUse::Put)).code,
            "fill_lease_invalid"
        );
        assert_eq!(
            ApiError::from(EventError::from(Invalid::TsZero)).status,
            400
        );
        let e = ApiError::from(EngineError::Overloaded { shard: 1 });
        assert_eq!(e.retry_after_s, Some(1));
        let body: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(body["error"]["code"], "overloaded");
    }

    /// The typed errors say what the strings they replaced said.
    #[test]
    fn messages() {
        let cases: Vec<(String, &str)> = vec![
            (
                KvError::from(Invalid::TtlZero).to_string(),
                "ttl must be greater than zero",
            ),
            (
                KvError::PreconditionFailed(Precondition::RevisionMismatch { have: 7, want: 5 })
                    .to_string(),
                "precondition failed: revision is 7, not 5",
            ),
            (
                Precondition::Missing { expected: Some(4) }.to_string(),
                "key does not exist (expected revision 4)",
            ),
            (
                KvError::PreconditionFailed(Precondition::Missing { expected: None }).to_string(),
                "precondition failed: key does not exist",
            ),
            (
                KvError::Overflow {
                    value: i64::MAX,
                    by: 1,
                }
                .to_string(),
                "counter overflow: 9223372036854775807 + 1 does not fit in a signed 64-bit integer",
            ),
            (
                KvError::TooLarge {
                    op: Some(3),
                    len: 10,
                    max: 4,
                }
                .to_string(),
                "ops[3]: value is 10 bytes; the limit (value_bytes_max) is 4",
            ),
            (
                KvError::TooLarge {
                    op: None,
                    len: 10,
                    max: 4,
                }
                .to_string(),
                "value is 10 bytes; the limit (value_bytes_max) is 4",
            ),
            (
                Invalid::KeyLength { len: 0 }
                    .at(ItemKind::Op, 2)
                    .to_string(),
                "ops[2]: key must be 1-1024 bytes, got 0",
            ),
            (
                Invalid::OutOfRange {
                    field: "priority",
                    min: 0,
                    max: 9,
                }
                .at(ItemKind::Job, 1)
                .to_string(),
                "job 1: priority must be 0-9",
            ),
            (
                Invalid::Json {
                    what: "data",
                    detail: "EOF".into(),
                }
                .at(ItemKind::Event, 0)
                .to_string(),
                "event 0: data is not valid JSON: EOF",
            ),
            (
                QueueError::TooLarge {
                    job: Some(2),
                    len: 9,
                    max: 8,
                }
                .to_string(),
                "job 2: payload is 9 bytes; job_bytes_max is 8",
            ),
            (
                Invalid::TooMany {
                    items: "tags",
                    got: 9,
                    max: 8,
                    per: "entry",
                    setting: "cache_tags_max",
                }
                .to_string(),
                "9 tags; at most 8 per entry (cache_tags_max)",
            ),
            (
                Invalid::NoTags.to_string(),
                "give at least one tag, or {\"all\":true}",
            ),
            (
                Invalid::JsonDepth {
                    what: "payload",
                    depth: 65,
                }
                .to_string(),
                "payload is nested 65 levels deep; at most 64 are accepted",
            ),
            (
                EventError::BucketFixed {
                    stream: "s".into(),
                    bucket_ms: 3_600_000,
                }
                .to_string(),
                "the bucket width of stream s is fixed at creation (3600000 ms); create a new stream to change it",
            ),
            (
                CacheError::LeaseInvalid(LeaseUse::FillError).to_string(),
                "this fill lease is no longer valid (it expired, the key was deleted, or a value landed)",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }
}
