//! Input a domain refuses: every domain error carries [`Invalid`] as a variant.

use super::limits::{JSON_DEPTH_MAX, KEY_BYTES_MAX, NAME_BYTES_MAX};

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
    /// A TTL past the longest duration (100 years).
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
    /// Stored JSON nested deeper than `JSON_DEPTH_MAX` (64 levels).
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
    pub(crate) fn label(self, index: Option<usize>) -> String {
        match (self, index) {
            (_, None) => String::new(),
            (ItemKind::Op, Some(i)) => format!("ops[{i}]: "),
            (ItemKind::Job, Some(i)) => format!("job {i}: "),
            (ItemKind::Event, Some(i)) => format!("event {i}: "),
        }
    }
}
