//! Queue mutations as the shard writer applies them. Each checks before it mutates: a rejection
//! ([`OpError::Rejected`], a `?` on a [`QueueError`]) is this operation's outcome and is only
//! returned before its first write; [`OpError::Storage`] (a `?` on a redb error) aborts the batch.

use super::model::{self, *};
use super::{feed, NewJob};
use crate::engine::{ApplyCtx, LoggedTable, OpError};
use crate::base::invalid::Invalid;
use crate::queue::QueueError;
use redb::ReadableTable;
use std::collections::{BTreeSet, HashMap};

pub type Res<T> = Result<T, OpError<QueueError>>;

/// The queue tables, opened once per operation.
pub struct Tabs<'c, 't> {
    jobs: LoggedTable<'c, 't, &'static [u8], &'static [u8]>,
    index: LoggedTable<'c, 't, &'static [u8], ()>,
    timers: LoggedTable<'c, 't, &'static [u8], ()>,
    meta: LoggedTable<'c, 't, &'static [u8], &'static [u8]>,
    dedupe: LoggedTable<'c, 't, &'static [u8], &'static [u8]>,
}

impl<'c, 't> Tabs<'c, 't> {
    pub fn open(ctx: &ApplyCtx<'c, 't>) -> Result<Self, redb::Error> {
        Ok(Tabs {
            jobs: ctx.table(Q_JOBS)?,
            index: ctx.table(Q_INDEX)?,
            timers: ctx.table(Q_TIMERS)?,
            meta: ctx.table(Q_META)?,
            dedupe: ctx.table(Q_DEDUPE)?,
        })
    }

    fn meta(&self, q: &str) -> Res<QueueMeta> {
        Ok(match self.meta.get(q.as_bytes())? {
            None => QueueMeta::default(),
            Some(g) => decode_meta(g.value())?,
        })
    }

    fn save_meta(&mut self, q: &str, m: &QueueMeta) -> Result<(), redb::Error> {
        self.meta
            .insert(q.as_bytes(), model::encode(m).as_slice())?;
        Ok(())
    }

    fn job(&self, q: &str, id: u64) -> Res<Option<Job>> {
        Ok(match self.jobs.get(job_key(q, id).as_slice())? {
            None => None,
            Some(g) => Some(decode_job(g.value())?),
        })
    }

    /// Moves a job from `old` to `new` (either may be absent): record, index, timer, counters.
    fn replace(
        &mut self,
        q: &str,
        meta: &mut QueueMeta,
        old: Option<&Place>,
        new: Option<&Job>,
    ) -> Result<(), redb::Error> {
        if let Some(o) = old {
            self.index.remove(o.index.as_slice())?;
            if let Some(t) = &o.timer {
                self.timers.remove(t.as_slice())?;
            }
            meta.add(o.state, -1);
        }
        match new {
            Some(n) => {
                self.jobs
                    .insert(job_key(q, n.id).as_slice(), model::encode(n).as_slice())?;
                self.index.insert(index_key(q, n).as_slice(), ())?;
                if let Some(t) = timer_key(q, n) {
                    self.timers.insert(t.as_slice(), ())?;
                }
                meta.add(n.state, 1);
            }
            None => {
                if let Some(o) = old {
                    self.jobs.remove(job_key(q, o.id).as_slice())?;
                }
            }
        }
        Ok(())
    }
}

/// Where a stored job sits (its index entry, timer and state), taken before the job is changed
/// in place, so a state change needs no copy of the job (and of its payload).
struct Place {
    id: u64,
    state: State,
    index: Vec<u8>,
    timer: Option<Vec<u8>>,
}

impl Place {
    fn of(q: &str, job: &Job) -> Place {
        Place {
            id: job.id,
            state: job.state,
            index: index_key(q, job),
            timer: timer_key(q, job),
        }
    }
}

pub fn decode_job(bytes: &[u8]) -> Result<Job, QueueError> {
    let job: Job = model::decode(bytes).map_err(QueueError::Corrupt)?;
    if job.version != RECORD_VERSION {
        return Err(QueueError::Corrupt(format!(
            "job record version {}",
            job.version
        )));
    }
    Ok(job)
}

pub fn decode_meta(bytes: &[u8]) -> Result<QueueMeta, QueueError> {
    let m: QueueMeta = model::decode(bytes).map_err(QueueError::Corrupt)?;
    if m.version != RECORD_VERSION {
        return Err(QueueError::Corrupt(format!(
            "queue record version {}",
            m.version
        )));
    }
    Ok(m)
}

/// What an enqueue did for one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    pub id: u64,
    pub duplicate: bool,
}

/// Enqueues a batch, all or nothing.
pub fn enqueue(ctx: &mut ApplyCtx<'_, '_>, q: &str, specs: &[NewJob]) -> Res<Vec<Enqueued>> {
    enqueue_from(ctx, q, specs, "")
}

/// [`enqueue`], saying in the feed which schedule fired it (`""`: none).
fn enqueue_from(
    ctx: &mut ApplyCtx<'_, '_>,
    q: &str,
    specs: &[NewJob],
    schedule: &str,
) -> Res<Vec<Enqueued>> {
    feed::note_enqueue(ctx, q, schedule);
    let now = ctx.now_ms;
    let mut t = Tabs::open(ctx)?;
    let mut meta = t.meta(q)?;
    // Check: dedupe (against the store and earlier jobs of this batch), then depth.
    enum Plan {
        New,
        DupOf(u64),
        DupOfEarlier(usize),
    }
    let mut first_with_key: HashMap<&str, usize> = HashMap::new();
    let mut plan = Vec::with_capacity(specs.len());
    for (i, s) in specs.iter().enumerate() {
        let Some(k) = s.dedupe_key.as_deref() else {
            plan.push(Plan::New);
            continue;
        };
        if let Some(&earlier) = first_with_key.get(k) {
            plan.push(Plan::DupOfEarlier(earlier));
            continue;
        }
        let stored = match t.dedupe.get(dedupe_key(q, k).as_slice())? {
            Some(g) => model::decode::<Dedupe>(g.value()).ok(),
            None => None,
        };
        match stored {
            Some(d) if d.until_ms > now => plan.push(Plan::DupOf(d.id)),
            _ => {
                first_with_key.insert(k, i);
                plan.push(Plan::New);
            }
        }
    }
    let new_jobs = plan.iter().filter(|p| matches!(p, Plan::New)).count() as u64;
    let max = meta.config.max_depth;
    if max > 0 && meta.depth() + new_jobs > max {
        return Err(QueueError::Full {
            depth: meta.depth(),
            max,
        }
        .into());
    }
    // Apply.
    let mut out: Vec<Enqueued> = Vec::with_capacity(specs.len());
    for (s, p) in specs.iter().zip(&plan) {
        let id = match p {
            Plan::DupOf(id) => {
                out.push(Enqueued {
                    id: *id,
                    duplicate: true,
                });
                continue;
            }
            Plan::DupOfEarlier(i) => {
                out.push(Enqueued {
                    id: out[*i].id,
                    duplicate: true,
                });
                continue;
            }
            Plan::New => ctx.next_revision(),
        };
        let run_at = s.run_at_ms.unwrap_or(now).max(now);
        let job = Job {
            version: RECORD_VERSION,
            id,
            state: if run_at > now {
                State::Delayed
            } else {
                State::Ready
            },
            payload: s.payload.clone(),
            priority: s.priority,
            run_at_ms: run_at,
            attempts: 0,
            max_attempts: s.max_attempts.unwrap_or(meta.config.max_attempts),
            backoff: s.backoff.unwrap_or(meta.config.backoff),
            dedupe_key: s.dedupe_key.clone(),
            enqueued_ms: now,
            updated_ms: now,
            last_error: None,
            lease_token: None,
            lease_until_ms: 0,
        };
        t.replace(q, &mut meta, None, Some(&job))?;
        if let Some(k) = &s.dedupe_key {
            let until = now.saturating_add(s.dedupe_window_ms);
            let dk = dedupe_key(q, k);
            let d = Dedupe {
                id,
                until_ms: until,
            };
            t.dedupe
                .insert(dk.as_slice(), model::encode(&d).as_slice())?;
            t.timers
                .insert(timer(until, TIMER_DEDUPE, id, &dk).as_slice(), ())?;
        }
        meta.totals.enqueued += 1;
        out.push(Enqueued {
            id,
            duplicate: false,
        });
    }
    t.save_meta(q, &meta)?;
    Ok(out)
}

/// Claims up to `max` ready jobs in (priority, run-at, id) order, each with a fresh lease token.
/// Claims up to `max` ready jobs with a lease of `lease_ms`, or of the queue's
/// `default_lease_ms` when `None` (read with the queue's record, in the same transaction).
pub fn claim(
    ctx: &mut ApplyCtx<'_, '_>,
    q: &str,
    max: usize,
    lease_ms: Option<u64>,
    lease_max_ms: u64,
) -> Res<Vec<Job>> {
    feed::note(ctx, feed::CLAIM, q);
    let now = ctx.now_ms;
    let mut t = Tabs::open(ctx)?;
    let mut meta = t.meta(q)?;
    if meta.paused || max == 0 {
        return Ok(Vec::new());
    }
    let lease_ms = lease_or_default(lease_ms, &meta, lease_max_ms)?;
    let prefix = index_prefix(q, State::Ready);
    let mut ids = Vec::with_capacity(max);
    for item in t.index.range(prefix.as_slice()..)? {
        let (k, _) = item?;
        let k = k.value();
        if !k.starts_with(&prefix) || ids.len() == max {
            break;
        }
        if let Some(id) = id_of_index_key(k) {
            ids.push(id);
        }
    }
    let mut claimed = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(old) = t.job(q, id)? else {
            continue;
        };
        let was = Place::of(q, &old);
        let mut job = old;
        job.state = State::InFlight;
        job.attempts = job.attempts.saturating_add(1);
        job.lease_token = Some(format!("{:032x}", rand::random::<u128>()));
        job.lease_until_ms = now.saturating_add(lease_ms);
        job.updated_ms = now;
        t.replace(q, &mut meta, Some(&was), Some(&job))?;
        claimed.push(job);
    }
    if !claimed.is_empty() {
        t.save_meta(q, &meta)?;
    }
    Ok(claimed)
}

/// The lease asked for, or the queue's default — refused like an asked-for one when a lowered
/// `lease_max_ms` no longer admits it.
fn lease_or_default(lease_ms: Option<u64>, meta: &QueueMeta, lease_max_ms: u64) -> Res<u64> {
    match lease_ms {
        Some(l) => Ok(l),
        None if meta.config.default_lease_ms > lease_max_ms => {
            Err(QueueError::from(crate::base::invalid::Invalid::DurationRange {
                field: "lease",
                max_ms: lease_max_ms,
            })
            .into())
        }
        None => Ok(meta.config.default_lease_ms),
    }
}

/// Loads an in-flight job and checks the caller's lease token.
fn leased(t: &Tabs<'_, '_>, q: &str, id: u64, token: &str) -> Res<Job> {
    let Some(job) = t.job(q, id)? else {
        return Err(QueueError::JobNotFound(id).into());
    };
    if job.state != State::InFlight || job.lease_token.as_deref() != Some(token) {
        return Err(QueueError::StaleLease(id).into());
    }
    Ok(job)
}

pub fn ack(ctx: &mut ApplyCtx<'_, '_>, q: &str, id: u64, token: &str) -> Res<()> {
    feed::note(ctx, feed::ACK, q);
    let mut t = Tabs::open(ctx)?;
    let mut meta = t.meta(q)?;
    let job = leased(&t, q, id, token)?;
    t.replace(q, &mut meta, Some(&Place::of(q, &job)), None)?;
    meta.totals.acked += 1;
    t.save_meta(q, &meta)?;
    Ok(())
}

/// How a nack wants the job handled.
#[derive(Debug, Clone, Default)]
pub struct Nack {
    pub error: Option<String>,
    pub delay_ms: Option<u64>,
    pub dead: bool,
}

/// Returns the job's new state.
pub fn nack(
    ctx: &mut ApplyCtx<'_, '_>,
    q: &str,
    id: u64,
    token: &str,
    n: &Nack,
    jitter: f64,
) -> Res<State> {
    feed::note(ctx, feed::NACK, q);
    let now = ctx.now_ms;
    let mut t = Tabs::open(ctx)?;
    let mut meta = t.meta(q)?;
    let old = leased(&t, q, id, token)?;
    let was = Place::of(q, &old);
    let mut job = old;
    job.lease_token = None;
    job.lease_until_ms = 0;
    job.updated_ms = now;
    job.last_error = n.error.clone();
    meta.totals.nacked += 1;
    if n.dead || job.attempts >= job.max_attempts {
        job.state = State::Dead;
        meta.totals.dead_lettered += 1;
    } else {
        let delay = n
            .delay_ms
            .unwrap_or_else(|| job.backoff.delay_ms(job.attempts, jitter));
        job.run_at_ms = now.saturating_add(delay);
        job.state = if delay == 0 {
            State::Ready
        } else {
            State::Delayed
        };
    }
    t.replace(q, &mut meta, Some(&was), Some(&job))?;
    t.save_meta(q, &meta)?;
    Ok(job.state)
}

/// Returns the new lease expiry.
pub fn extend(
    ctx: &mut ApplyCtx<'_, '_>,
    q: &str,
    id: u64,
    token: &str,
    lease_ms: Option<u64>,
    lease_max_ms: u64,
) -> Res<u64> {
    feed::note(ctx, feed::EXTEND, q);
    let now = ctx.now_ms;
    let mut t = Tabs::open(ctx)?;
    let mut meta = t.meta(q)?;
    let lease_ms = lease_or_default(lease_ms, &meta, lease_max_ms)?;
    let old = leased(&t, q, id, token)?;
    let was = Place::of(q, &old);
    let mut job = old;
    job.lease_until_ms = now.saturating_add(lease_ms);
    job.updated_ms = now;
    t.replace(q, &mut meta, Some(&was), Some(&job))?;
    t.save_meta(q, &meta)?;
    Ok(job.lease_until_ms)
}

/// Deletes a job that is not in flight.
pub fn cancel(ctx: &mut ApplyCtx<'_, '_>, q: &str, id: u64) -> Res<()> {
    feed::note(ctx, feed::CANCEL, q);
    let mut t = Tabs::open(ctx)?;
    let mut meta = t.meta(q)?;
    let Some(job) = t.job(q, id)? else {
        return Err(QueueError::JobNotFound(id).into());
    };
    if job.state == State::InFlight {
        return Err(QueueError::InFlight(id).into());
    }
    t.replace(q, &mut meta, Some(&Place::of(q, &job)), None)?;
    t.save_meta(q, &meta)?;
    Ok(())
}

/// Up to `max` ids in a state, in index order.
fn ids_in(
    t: &Tabs<'_, '_>,
    q: &str,
    state: State,
    max: usize,
) -> Result<(Vec<u64>, bool), redb::Error> {
    let prefix = index_prefix(q, state);
    let mut ids = Vec::new();
    for item in t.index.range(prefix.as_slice()..)? {
        let (k, _) = item?;
        let k = k.value();
        if !k.starts_with(&prefix) {
            return Ok((ids, false));
        }
        if ids.len() == max {
            return Ok((ids, true));
        }
        if let Some(id) = id_of_index_key(k) {
            ids.push(id);
        }
    }
    Ok((ids, false))
}

/// Moves dead jobs back to ready with attempts reset: the given ids, or (with `None`) up to
/// `max` of all dead jobs. Returns (moved, more remain).
pub fn requeue(
    ctx: &mut ApplyCtx<'_, '_>,
    q: &str,
    ids: Option<&[u64]>,
    max: usize,
) -> Res<(u64, bool)> {
    feed::note(ctx, feed::REQUEUE, q);
    let now = ctx.now_ms;
    let mut t = Tabs::open(ctx)?;
    let mut meta = t.meta(q)?;
    let (ids, more) = match ids {
        Some(ids) => (ids.to_vec(), false),
        None => ids_in(&t, q, State::Dead, max)?,
    };
    let mut moved = 0;
    for id in ids {
        let Some(old) = t.job(q, id)? else {
            continue;
        };
        if old.state != State::Dead {
            continue;
        }
        let was = Place::of(q, &old);
        let mut job = old;
        job.state = State::Ready;
        job.attempts = 0;
        job.run_at_ms = now;
        job.updated_ms = now;
        t.replace(q, &mut meta, Some(&was), Some(&job))?;
        moved += 1;
    }
    t.save_meta(q, &meta)?;
    Ok((moved, more))
}

/// Deletes up to `max` jobs in a state (not in flight). Returns (deleted, more remain).
pub fn purge(ctx: &mut ApplyCtx<'_, '_>, q: &str, state: State, max: usize) -> Res<(u64, bool)> {
    if state == State::InFlight {
        return Err(QueueError::Invalid(Invalid::PurgeInFlight).into());
    }
    feed::note(ctx, feed::PURGE, q);
    let mut t = Tabs::open(ctx)?;
    let mut meta = t.meta(q)?;
    let (ids, more) = ids_in(&t, q, state, max)?;
    let mut deleted = 0;
    for id in ids {
        if let Some(job) = t.job(q, id)? {
            t.replace(q, &mut meta, Some(&Place::of(q, &job)), None)?;
            deleted += 1;
        }
    }
    t.save_meta(q, &meta)?;
    Ok((deleted, more))
}

/// Updates a queue's config and pause flag; returns the stored meta.
pub fn configure(
    ctx: &mut ApplyCtx<'_, '_>,
    q: &str,
    config: Option<QueueConfig>,
    paused: Option<bool>,
) -> Res<QueueMeta> {
    let verb = match (config.is_some(), paused) {
        (false, Some(true)) => feed::PAUSE,
        (false, Some(false)) => feed::RESUME,
        _ => feed::CONFIGURE,
    };
    feed::note(ctx, verb, q);
    let mut t = Tabs::open(ctx)?;
    let mut meta = t.meta(q)?;
    if let Some(c) = config {
        meta.config = c;
    }
    if let Some(p) = paused {
        meta.paused = p;
    }
    t.save_meta(q, &meta)?;
    Ok(meta)
}

/// Handles up to `max` due timers of the shard: delayed jobs become ready, expired leases go
/// back to ready (or to dead after `max_attempts`), dedupe records expire. Returns the queues
/// that gained ready jobs.
pub fn promote(ctx: &mut ApplyCtx<'_, '_>, max: usize) -> Res<BTreeSet<String>> {
    let now = ctx.now_ms;
    let mut t = Tabs::open(ctx)?;
    let end = now.saturating_add(1).to_be_bytes();
    let mut due = Vec::new();
    for item in t.timers.range(..end.as_slice())?.take(max) {
        let (k, _) = item?;
        due.push(k.value().to_vec());
    }
    let mut woken = BTreeSet::new();
    let mut metas: HashMap<String, QueueMeta> = HashMap::new();
    for k in &due {
        t.timers.remove(k.as_slice())?;
        let Some((when, kind, id, tail)) = parse_timer(k) else {
            continue;
        };
        if kind == TIMER_DEDUPE {
            let stale = match t.dedupe.get(tail)? {
                Some(g) => model::decode::<Dedupe>(g.value())
                    .map(|d| d.id == id && d.until_ms <= now)
                    .unwrap_or(true),
                None => false,
            };
            if stale {
                t.dedupe.remove(tail)?;
            }
            continue;
        }
        let Ok(q) = std::str::from_utf8(tail) else {
            continue;
        };
        // A job or queue record that does not decode is left where it is.
        let old = match t.job(q, id) {
            Ok(Some(j)) => j,
            Ok(None) | Err(OpError::Rejected(_)) => continue,
            Err(e) => return Err(e),
        };
        // The timer must still describe the job: a later transition replaced it otherwise.
        let current = match (kind, old.state) {
            (TIMER_DELAYED, State::Delayed) => old.run_at_ms == when,
            (TIMER_LEASE, State::InFlight) => old.lease_until_ms == when,
            _ => false,
        };
        if !current {
            continue;
        }
        let meta = match metas.get_mut(q) {
            Some(m) => m,
            None => {
                let m = match t.meta(q) {
                    Ok(m) => m,
                    Err(OpError::Rejected(_)) => continue,
                    Err(e) => return Err(e),
                };
                metas.entry(q.to_string()).or_insert(m)
            }
        };
        let was = Place::of(q, &old);
        let verb = match was.state {
            State::InFlight => feed::LEASE_EXPIRED,
            _ => feed::DELAY_DONE,
        };
        feed::note(ctx, verb, q);
        let mut job = old;
        job.updated_ms = now;
        if was.state == State::InFlight {
            meta.totals.lease_expired += 1;
            job.lease_token = None;
            job.lease_until_ms = 0;
            if job.attempts >= job.max_attempts {
                job.state = State::Dead;
                job.last_error = Some("lease expired on the last attempt".into());
                meta.totals.dead_lettered += 1;
            } else {
                job.state = State::Ready;
                job.run_at_ms = now;
            }
        } else {
            job.state = State::Ready;
        }
        // `replace` needs the timer entry present to remove it; it was removed above, which is
        // harmless (remove of a missing key is a no-op).
        t.replace(q, meta, Some(&was), Some(&job))?;
        if job.state == State::Ready {
            woken.insert(q.to_string());
        }
    }
    for (q, m) in &metas {
        t.save_meta(q, m)?;
    }
    Ok(woken)
}

/// Stores a schedule, keeping the firing history of one it replaces. Returns (created, stored).
pub fn put_schedule(ctx: &mut ApplyCtx<'_, '_>, mut s: Schedule) -> Res<(bool, Schedule)> {
    feed::note(ctx, feed::SCHEDULE_PUT, &s.name);
    let mut t = ctx.table(Q_SCHED)?;
    let old = t
        .get(s.name.as_bytes())?
        .map(|g| model::decode::<Schedule>(g.value()).map_err(QueueError::Corrupt))
        .transpose()?;
    if let Some(o) = &old {
        s.created_ms = o.created_ms;
        s.fired = o.fired;
        s.last_fire_ms = o.last_fire_ms;
    }
    t.insert(s.name.as_bytes(), model::encode(&s).as_slice())?;
    Ok((old.is_none(), s))
}

pub fn delete_schedule(ctx: &mut ApplyCtx<'_, '_>, name: &str) -> Res<bool> {
    feed::note(ctx, feed::SCHEDULE_DELETE, name);
    let mut t = ctx.table(Q_SCHED)?;
    let existed = t.remove(name.as_bytes())?.is_some();
    Ok(existed)
}

/// Fires a due schedule: enqueues its job and records the tick in the same commit, so a tick
/// enqueues at most once, restarts included. Ticks missed while stopped enqueue once. Returns
/// the queue that got a job. A refused enqueue (a full queue) is recorded in the schedule.
pub fn fire(ctx: &mut ApplyCtx<'_, '_>, name: &str) -> Res<Option<String>> {
    let now = ctx.now_ms;
    let sched = {
        let t = ctx.table(Q_SCHED)?;
        let got = t.get(name.as_bytes())?;
        match got.map(|g| model::decode::<Schedule>(g.value())) {
            Some(Ok(s)) => s,
            _ => return Ok(None),
        }
    };
    let Some(due) = sched.next_fire_ms.filter(|t| *t <= now) else {
        return Ok(None);
    };
    let job = NewJob {
        payload: sched.payload.clone(),
        priority: sched.priority,
        max_attempts: sched.max_attempts,
        ..NewJob::default()
    };
    let result = match enqueue_from(ctx, &sched.queue, &[job], name) {
        Ok(r) => Ok(r),
        Err(OpError::Rejected(e)) => Err(e),
        Err(e) => return Err(e),
    };
    let mut s = sched;
    s.last_fire_ms = Some(due);
    s.next_fire_ms = super::cron::Cron::parse(&s.cron)
        .ok()
        .and_then(|c| c.next_after(now));
    let woke = match result {
        Ok(_) => {
            s.fired += 1;
            s.last_error = None;
            Some(s.queue.clone())
        }
        Err(e) => {
            s.last_error = Some(format!("tick {due}: {e}"));
            None
        }
    };
    let mut t = ctx.table(Q_SCHED)?;
    t.insert(name.as_bytes(), model::encode(&s).as_slice())?;
    Ok(woke)
}
