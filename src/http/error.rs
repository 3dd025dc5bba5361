//! Every domain's errors as the HTTP API answers them: the one place a status, a code and
//! the JSON body `{"error":{"code":"…","message":"…"}}` are chosen.

use crate::base::invalid::Invalid;
use crate::cache::CacheError;
use crate::engine::EngineError;
use crate::events::EventError;
use crate::kv::KvError;
use crate::queue::QueueError;
use std::fmt;

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
    /// A change-feed position the client needs to go on (`"position"` in the body): the
    /// oldest one still held on a 410, this store's generation on a 409.
    pub position: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
            allow: None,
            position: None,
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
        match &self.position {
            None => serde_json::json!({"error": {"code": self.code, "message": self.message}}),
            Some(p) => serde_json::json!({"error": {"code": self.code, "message": self.message, "position": p}}),
        }
        .to_string()
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
            // A primary waiting for its lease (failover = "auto") takes writes again soon.
            EngineError::ReadOnly {
                code: crate::store::lease::NO_LEASE,
                ..
            } => ApiError::unavailable(crate::store::lease::NO_LEASE, message),
            EngineError::ReadOnly { code, .. } => ApiError::new(409, code, message),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::invalid::ItemKind;
    use crate::cache::LeaseUse;
    use crate::kv::Precondition;

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
