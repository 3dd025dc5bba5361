//! How queue and schedule operations read in the change feed ([`crate::engine::feed`]).
//!
//! Jobs (domain `queue`, name = the queue): `enqueued` (payload, priority, run-at, dedupe key,
//! and `schedule` when a cron schedule fired it), `claimed` (attempt, lease end — never the
//! lease token), `acked`, `nacked` (error; the state it went to), `dead` (a nack or an expired
//! lease on the last attempt), `extended`, `ready` (a delay ran out), `lease_expired`,
//! `requeued`, `deleted`, `purged`; the queue itself: `configured`, `paused`, `resumed`.
//! Schedules (domain `schedules`, name = the schedule): `put` and `deleted`.

use super::model::{self, Job, Schedule, State, Q_JOBS, Q_META, Q_SCHED};
use crate::engine::feed::note::{Note, NoteBuf};
use crate::engine::feed::{json_field, Change, FeedSpec};
use crate::engine::redo::Op;
use crate::engine::writer::ApplyCtx;
use redb::TableHandle;

/// The queue domain in the feed.
pub const FEED: FeedSpec = FeedSpec { domain: 2, decode };

pub const ENQUEUE: u8 = 1;
pub const CLAIM: u8 = 2;
pub const ACK: u8 = 3;
pub const NACK: u8 = 4;
pub const EXTEND: u8 = 5;
pub const DELAY_DONE: u8 = 6;
pub const LEASE_EXPIRED: u8 = 7;
pub const REQUEUE: u8 = 8;
pub const CANCEL: u8 = 9;
pub const PURGE: u8 = 10;
pub const CONFIGURE: u8 = 11;
pub const PAUSE: u8 = 12;
pub const RESUME: u8 = 13;
pub const SCHEDULE_PUT: u8 = 14;
pub const SCHEDULE_DELETE: u8 = 15;

/// Notes an operation on `queue` (or on the schedule named `queue` for the schedule verbs).
pub fn note(ctx: &mut ApplyCtx<'_, '_>, verb: u8, queue: &str) {
    ctx.note(NoteBuf::new(FEED.domain, verb).str(queue).bytes());
}

/// Notes an enqueue into `queue`, fired by `schedule` when not empty.
pub fn note_enqueue(ctx: &mut ApplyCtx<'_, '_>, queue: &str, schedule: &str) {
    ctx.note(
        NoteBuf::new(FEED.domain, ENQUEUE)
            .str(queue)
            .str(schedule)
            .bytes(),
    );
}

fn state(s: State) -> &'static str {
    match s {
        State::Ready => "ready",
        State::Delayed => "delayed",
        State::InFlight => "in_flight",
        State::Dead => "dead",
    }
}

/// The id of a job key (`queue ‖ 0 ‖ id BE`).
fn job_id(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(
        key.get(key.len().checked_sub(8)?..)?.try_into().ok()?,
    ))
}

fn decode(note: &Note<'_>, ops: &[Op<'_>], out: &mut Vec<Change>) {
    let mut args = note.args();
    let queue = args.str().unwrap_or_default().to_string();
    match note.verb {
        SCHEDULE_PUT | SCHEDULE_DELETE => {
            for op in ops {
                match op {
                    Op::Put { name, value, .. } if *name == Q_SCHED.name() => {
                        out.push(schedule_put(value));
                    }
                    Op::Del { name, key, .. } if *name == Q_SCHED.name() => out.push(Change::new(
                        "schedules",
                        "deleted",
                        String::from_utf8_lossy(key),
                    )),
                    _ => {}
                }
            }
        }
        CONFIGURE | PAUSE | RESUME => {
            let op = match note.verb {
                PAUSE => "paused",
                RESUME => "resumed",
                _ => "configured",
            };
            for op_ in ops {
                if let Op::Put { name, value, .. } = op_ {
                    if *name == Q_META.name() {
                        out.push(queue_config(Change::new("queue", op, &queue), value));
                    }
                }
            }
        }
        verb => {
            let schedule = if verb == ENQUEUE { args.str() } else { None };
            for op in ops {
                match op {
                    Op::Put { name, value, .. } if *name == Q_JOBS.name() => {
                        if let Some(c) = job_change(verb, &queue, value, schedule) {
                            out.push(c);
                        }
                    }
                    Op::Del { name, key, .. } if *name == Q_JOBS.name() => {
                        let op = match verb {
                            ACK => "acked",
                            CANCEL => "deleted",
                            _ => "purged",
                        };
                        out.push(
                            Change::new("queue", op, &queue)
                                .with("id", job_id(key).map(|i| i.to_string())),
                        );
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The change a job record written under `verb` stands for.
fn job_change(verb: u8, queue: &str, value: &[u8], schedule: Option<&str>) -> Option<Change> {
    let job: Job = match model::decode::<Job>(value) {
        Ok(j) => j,
        Err(e) => {
            return Some(Change::new("queue", "unreadable", queue).with("error", e.to_string()))
        }
    };
    let op = match verb {
        ENQUEUE => "enqueued",
        CLAIM => "claimed",
        NACK if job.state == State::Dead => "dead",
        NACK => "nacked",
        EXTEND => "extended",
        DELAY_DONE => "ready",
        LEASE_EXPIRED if job.state == State::Dead => "dead",
        LEASE_EXPIRED => "lease_expired",
        REQUEUE => "requeued",
        _ => return None,
    };
    let c = Change::new("queue", op, queue)
        .with("id", job.id.to_string())
        .with("state", state(job.state));
    Some(match verb {
        ENQUEUE => {
            let c = json_field(c, "payload", &job.payload)
                .with("priority", job.priority)
                .with("run_at_ms", job.run_at_ms)
                .with("max_attempts", job.max_attempts)
                .with("dedupe_key", job.dedupe_key);
            match schedule.filter(|s| !s.is_empty()) {
                Some(s) => c.with("schedule", s),
                None => c,
            }
        }
        CLAIM | EXTEND => c
            .with("attempt", job.attempts)
            .with("lease_until_ms", job.lease_until_ms),
        NACK | LEASE_EXPIRED => c
            .with("attempts", job.attempts)
            .with("run_at_ms", job.run_at_ms)
            .with("error", job.last_error),
        _ => c.with("run_at_ms", job.run_at_ms),
    })
}

fn queue_config(change: Change, value: &[u8]) -> Change {
    match model::decode::<model::QueueMeta>(value) {
        Ok(m) => change
            .with("paused", m.paused)
            .with("max_depth", m.config.max_depth)
            .with("default_lease_ms", m.config.default_lease_ms)
            .with("max_attempts", m.config.max_attempts),
        Err(e) => change.with("error", e.to_string()),
    }
}

fn schedule_put(value: &[u8]) -> Change {
    match model::decode::<Schedule>(value) {
        Ok(s) => json_field(
            Change::new("schedules", "put", &s.name)
                .with("cron", s.cron.clone())
                .with("queue", s.queue.clone()),
            "payload",
            &s.payload,
        )
        .with("priority", s.priority)
        .with("max_attempts", s.max_attempts)
        .with("next_fire_ms", s.next_fire_ms),
        Err(e) => Change::new("schedules", "unreadable", "").with("error", e),
    }
}
