//! Stored queue records and their keys.
//!
//! Tables (in the shard that owns the queue; `q` is the queue name, which cannot contain 0x00):
//!
//! | table | key | value |
//! |---|---|---|
//! | `q_jobs` | `q ‖ 0x00 ‖ id u64 BE` | [`Job`] |
//! | `q_index` | `q ‖ 0x00 ‖ state tag ‖ order` | `()` — one entry per job, ordered for its state |
//! | `q_timers` | `due_ms u64 BE ‖ kind ‖ id u64 BE ‖ q` | `()` — delayed run-at, lease expiry, dedupe expiry |
//! | `q_meta` | `q` | [`QueueMeta`] |
//! | `q_dedupe` | `q ‖ 0x00 ‖ dedupe key` | [`Dedupe`] |
//!
//! The index orders: ready `prio ‖ run_at ‖ id` (claim order), delayed `run_at ‖ id`, in flight
//! `lease_until ‖ id`, dead `id`. Records are bincode 2 (fixed-width little-endian integers) behind
//! a version byte.

use bincode::{Decode, Encode};
use redb::TableDefinition;

pub const Q_JOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("q_jobs");
pub const Q_INDEX: TableDefinition<&[u8], ()> = TableDefinition::new("q_index");
pub const Q_TIMERS: TableDefinition<&[u8], ()> = TableDefinition::new("q_timers");
pub const Q_META: TableDefinition<&[u8], &[u8]> = TableDefinition::new("q_meta");
pub const Q_DEDUPE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("q_dedupe");
/// Cron schedules, in the shard of the queue they feed: name → [`Schedule`].
pub const Q_SCHED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("q_sched");

/// Record format version written by this build.
pub const RECORD_VERSION: u8 = 1;

/// The state of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum State {
    Ready,
    Delayed,
    InFlight,
    Dead,
}

impl State {
    pub fn tag(self) -> u8 {
        match self {
            State::Ready => b'r',
            State::Delayed => b'd',
            State::InFlight => b'i',
            State::Dead => b'x',
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            State::Ready => "ready",
            State::Delayed => "delayed",
            State::InFlight => "in_flight",
            State::Dead => "dead",
        }
    }
    pub fn parse(s: &str) -> Option<State> {
        Some(match s {
            "ready" => State::Ready,
            "delayed" => State::Delayed,
            "in_flight" => State::InFlight,
            "dead" => State::Dead,
            _ => return None,
        })
    }
    /// Its index in per-state counts.
    pub(crate) fn slot(self) -> usize {
        match self {
            State::Ready => 0,
            State::Delayed => 1,
            State::InFlight => 2,
            State::Dead => 3,
        }
    }
}

/// Exponential backoff with jitter: `min(max, base × factor^(attempt-1))`, then a random value in
/// its upper half ("equal jitter") so retries of many jobs do not arrive together.
#[derive(Debug, Clone, Copy, PartialEq, Encode, Decode, serde::Serialize, serde::Deserialize)]
pub struct Backoff {
    pub base_ms: u64,
    pub factor: f64,
    pub max_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base_ms: 1_000,
            factor: 2.0,
            max_ms: 3_600_000,
        }
    }
}

impl Backoff {
    /// A backoff the queue can run: a factor of 1–100.
    pub fn validate(&self) -> Result<(), crate::base::invalid::Invalid> {
        if !(1.0..=100.0).contains(&self.factor) {
            return Err(crate::base::invalid::Invalid::OutOfRange {
                field: "backoff.factor",
                min: 1,
                max: 100,
            });
        }
        Ok(())
    }

    /// The delay before retry number `attempt` (1 = after the first failure).
    pub fn delay_ms(&self, attempt: u32, jitter: f64) -> u64 {
        let exp = self
            .factor
            .max(1.0)
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let full = (self.base_ms as f64 * exp).min(self.max_ms as f64).max(0.0);
        let half = full / 2.0;
        (half + half * jitter.clamp(0.0, 1.0)) as u64
    }
}

/// One job.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Job {
    pub version: u8,
    pub id: u64,
    pub state: State,
    /// The JSON payload, as text.
    pub payload: Vec<u8>,
    pub priority: u8,
    /// When it may run (ready jobs: when it became ready).
    pub run_at_ms: u64,
    /// Deliveries so far (a claim counts one).
    pub attempts: u32,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub dedupe_key: Option<String>,
    pub enqueued_ms: u64,
    pub updated_ms: u64,
    pub last_error: Option<String>,
    /// Hex token of the current lease (in flight only).
    pub lease_token: Option<String>,
    pub lease_until_ms: u64,
}

/// A queue's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Encode, Decode)]
pub struct QueueConfig {
    /// Ready + delayed jobs allowed before enqueue answers 429; 0 = unlimited.
    pub max_depth: u64,
    pub default_lease_ms: u64,
    pub max_attempts: u32,
    pub backoff: Backoff,
}

impl QueueConfig {
    /// A config claims and retries can run with: a default lease of 1 ms–`lease_max_ms`, at
    /// least one attempt, a valid backoff. Checked by the domain, so every way in (the API, an
    /// import, an embedder) meets the same rule.
    pub fn validate(&self, lease_max_ms: u64) -> Result<(), crate::base::invalid::Invalid> {
        use crate::base::invalid::Invalid;
        if self.default_lease_ms == 0 || self.default_lease_ms > lease_max_ms {
            return Err(Invalid::OutOfRange {
                field: "default_lease (ms)",
                min: 1,
                max: lease_max_ms,
            });
        }
        if self.max_attempts == 0 {
            return Err(Invalid::OutOfRange {
                field: "max_attempts",
                min: 1,
                max: u32::MAX as u64,
            });
        }
        self.backoff.validate()
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_depth: 0,
            default_lease_ms: 30_000,
            max_attempts: 5,
            backoff: Backoff::default(),
        }
    }
}

/// Totals since the queue was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct Totals {
    pub enqueued: u64,
    pub acked: u64,
    pub nacked: u64,
    pub dead_lettered: u64,
    pub lease_expired: u64,
}

/// A queue's config, pause flag and counters, updated in the same commit as its jobs.
#[derive(Debug, Clone, Copy, PartialEq, Encode, Decode)]
pub struct QueueMeta {
    pub version: u8,
    pub config: QueueConfig,
    pub paused: bool,
    /// Jobs per state: ready, delayed, in flight, dead.
    pub counts: [u64; 4],
    pub totals: Totals,
}

impl Default for QueueMeta {
    fn default() -> Self {
        Self {
            version: RECORD_VERSION,
            config: QueueConfig::default(),
            paused: false,
            counts: [0; 4],
            totals: Totals::default(),
        }
    }
}

impl QueueMeta {
    pub fn count(&self, s: State) -> u64 {
        self.counts[s.slot()]
    }
    pub fn add(&mut self, s: State, n: i64) {
        let c = &mut self.counts[s.slot()];
        *c = c.saturating_add_signed(n);
    }
    /// Ready + delayed: what `max_depth` bounds.
    pub fn depth(&self) -> u64 {
        self.count(State::Ready) + self.count(State::Delayed)
    }
}

/// A cron schedule that enqueues a job into `queue` at every tick.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Schedule {
    pub version: u8,
    pub name: String,
    pub cron: String,
    pub queue: String,
    /// JSON text of each job's payload.
    pub payload: Vec<u8>,
    pub priority: u8,
    pub max_attempts: Option<u32>,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// The last tick that enqueued (recorded in the same commit as that enqueue).
    pub last_fire_ms: Option<u64>,
    pub next_fire_ms: Option<u64>,
    pub fired: u64,
    pub last_error: Option<String>,
}

/// A dedupe record: the job that owns the key until `until_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct Dedupe {
    pub id: u64,
    pub until_ms: u64,
}

pub use crate::engine::codec::{decode_record as decode, encode_record as encode};

/// `q ‖ 0x00`
pub fn queue_prefix(q: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(q.len() + 1 + 17);
    k.extend_from_slice(q.as_bytes());
    k.push(0);
    k
}

pub fn job_key(q: &str, id: u64) -> Vec<u8> {
    let mut k = queue_prefix(q);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// The prefix of a state's index entries.
pub fn index_prefix(q: &str, s: State) -> Vec<u8> {
    let mut k = queue_prefix(q);
    k.push(s.tag());
    k
}

/// The index key of a job in its current state.
pub fn index_key(q: &str, job: &Job) -> Vec<u8> {
    let mut k = index_prefix(q, job.state);
    match job.state {
        State::Ready => {
            k.push(job.priority);
            k.extend_from_slice(&job.run_at_ms.to_be_bytes());
        }
        State::Delayed => k.extend_from_slice(&job.run_at_ms.to_be_bytes()),
        State::InFlight => k.extend_from_slice(&job.lease_until_ms.to_be_bytes()),
        State::Dead => {}
    }
    k.extend_from_slice(&job.id.to_be_bytes());
    k
}

/// The job id at the end of an index key.
pub fn id_of_index_key(k: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = k.get(k.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

pub const TIMER_DELAYED: u8 = b'd';
pub const TIMER_LEASE: u8 = b'i';
pub const TIMER_DEDUPE: u8 = b'u';

/// The timer of a job that needs one (delayed: run-at; in flight: lease expiry).
pub fn timer_key(q: &str, job: &Job) -> Option<Vec<u8>> {
    match job.state {
        State::Delayed => Some(timer(job.run_at_ms, TIMER_DELAYED, job.id, q.as_bytes())),
        State::InFlight => Some(timer(job.lease_until_ms, TIMER_LEASE, job.id, q.as_bytes())),
        _ => None,
    }
}

pub fn timer(due_ms: u64, kind: u8, id: u64, tail: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(17 + tail.len());
    k.extend_from_slice(&due_ms.to_be_bytes());
    k.push(kind);
    k.extend_from_slice(&id.to_be_bytes());
    k.extend_from_slice(tail);
    k
}

/// Splits a timer key into (due, kind, id, tail).
pub fn parse_timer(k: &[u8]) -> Option<(u64, u8, u64, &[u8])> {
    if k.len() < 17 {
        return None;
    }
    let due = u64::from_be_bytes(k[..8].try_into().ok()?);
    let id = u64::from_be_bytes(k[9..17].try_into().ok()?);
    Some((due, k[8], id, &k[17..]))
}

pub fn dedupe_key(q: &str, key: &str) -> Vec<u8> {
    let mut k = queue_prefix(q);
    k.extend_from_slice(key.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: State) -> Job {
        Job {
            version: RECORD_VERSION,
            id: 42,
            state,
            payload: b"{}".to_vec(),
            priority: 3,
            run_at_ms: 1000,
            attempts: 0,
            max_attempts: 5,
            backoff: Backoff::default(),
            dedupe_key: None,
            enqueued_ms: 1000,
            updated_ms: 1000,
            last_error: None,
            lease_token: None,
            lease_until_ms: 0,
        }
    }

    #[test]
    fn records_round_trip() {
        let j = job(State::Ready);
        assert_eq!(decode::<Job>(&encode(&j)).unwrap(), j);
        let m = QueueMeta::default();
        assert_eq!(decode::<QueueMeta>(&encode(&m)).unwrap(), m);
        assert!(decode::<Job>(&[1, 9, 9]).is_err());
        assert!(decode::<Job>(&[]).is_err());
    }

    #[test]
    fn ready_index_orders_by_priority_then_time_then_id() {
        let mut a = job(State::Ready);
        a.priority = 0;
        a.run_at_ms = 5000;
        let mut b = job(State::Ready);
        b.priority = 1;
        b.run_at_ms = 1;
        assert!(index_key("q", &a) < index_key("q", &b));
        let mut c = a.clone();
        c.id = 43;
        assert!(index_key("q", &a) < index_key("q", &c));
        assert_eq!(id_of_index_key(&index_key("q", &c)), Some(43));
    }

    #[test]
    fn backoff_grows_and_caps() {
        let b = Backoff {
            base_ms: 1000,
            factor: 2.0,
            max_ms: 10_000,
        };
        assert_eq!(b.delay_ms(1, 1.0), 1000);
        assert_eq!(b.delay_ms(3, 1.0), 4000);
        assert_eq!(b.delay_ms(10, 1.0), 10_000);
        assert_eq!(b.delay_ms(3, 0.0), 2000);
        assert_eq!(b.delay_ms(u32::MAX, 1.0), 10_000);
    }

    #[test]
    fn timers_parse_back() {
        let k = timer(77, TIMER_LEASE, 9, b"jobs");
        assert_eq!(parse_timer(&k), Some((77, TIMER_LEASE, 9, &b"jobs"[..])));
        assert_eq!(parse_timer(b"short"), None);
    }
}
