//! The durable work queue: priorities, delays, leases with tokens, retries with backoff, dead
//! letters, dedupe, long-poll claims. No HTTP here.
//!
//! A queue lives on one shard (routed by its name), so every operation on it is one operation in
//! that shard's group commit. Delivery is at-least-once: a job whose worker dies is delivered
//! again when its lease expires.

mod error;
mod feed;
internal!(apply, cron, model, schedules);
pub use crate::engine::departure::{Departure, Presence};
pub use apply::{Enqueued, Nack};
pub use error::QueueError;
pub use model::{Backoff, Job, QueueConfig, QueueMeta, Schedule, State, Totals};
pub use schedules::ScheduleSpec;

use crate::base::invalid::{Invalid, ItemKind};
use crate::engine::Engine;

use base64::Engine as _;
use model::*;
use redb::ReadableTable;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

testing_pub! {
    /// The queue domain as the engine sees it.
    const DOMAIN: crate::engine::DomainSpec = crate::engine::DomainSpec {
        name: "queue",
        init_tables,
        check,
        open: Some(|engine, config| std::sync::Arc::new(Queues::from_config(engine, config))),
        feed: Some(&feed::FEED),
    };
}

/// `shardbox check` for queues (invariant 11): every job decodes, carries its key's id and a
/// valid JSON payload, and has the index entry of its state; each queue's stored counts equal
/// its jobs per state and its index has no other entries; every schedule decodes with a valid
/// cron expression and payload.
fn check(
    txn: &redb::ReadTransaction,
    shard: usize,
    c: &mut crate::engine::domain::Checked<'_>,
) -> Result<(), redb::Error> {
    use crate::engine::domain::open;
    use std::collections::BTreeMap;
    let index = open(txn, Q_INDEX)?;
    let timers = open(txn, Q_TIMERS)?;
    let mut counted: BTreeMap<Vec<u8>, [u64; 4]> = BTreeMap::new();
    if let Some(jobs) = open(txn, Q_JOBS)? {
        for item in jobs.iter()? {
            let (k, v) = item?;
            c.record();
            let key = k.value();
            let Some(split) = key.len().checked_sub(9).filter(|&i| key[i] == 0) else {
                c.problem(format!("shard {shard}: q_jobs key {key:?} is malformed"));
                continue;
            };
            let q = String::from_utf8_lossy(&key[..split]).into_owned();
            let id = u64::from_be_bytes(key[split + 1..].try_into().unwrap_or_default());
            let job = match apply::decode_job(v.value()) {
                Ok(j) => j,
                Err(e) => {
                    c.problem(format!("shard {shard}: queue {q:?} job {id}: {e}"));
                    continue;
                }
            };
            if job.id != id {
                c.problem(format!(
                    "shard {shard}: queue {q:?} job {id}: the record says id {}",
                    job.id
                ));
            }
            if let Err(e) = crate::base::util::check_stored_json("payload", &job.payload) {
                c.problem(format!("shard {shard}: queue {q:?} job {id}: {e}"));
            }
            let indexed = match &index {
                Some(t) => t.get(index_key(&q, &job).as_slice())?.is_some(),
                None => false,
            };
            if !indexed {
                c.problem(format!(
                    "shard {shard}: queue {q:?} job {id} is {} but has no index entry for it",
                    job.state.name()
                ));
            }
            if let Some(tk) = timer_key(&q, &job) {
                let timed = match &timers {
                    Some(t) => t.get(tk.as_slice())?.is_some(),
                    None => false,
                };
                if !timed {
                    c.problem(format!(
                        "shard {shard}: queue {q:?} job {id} is {} but has no timer (it would never move on)",
                        job.state.name()
                    ));
                }
            }
            counted.entry(key[..split].to_vec()).or_default()[job.state.slot()] += 1;
        }
    }
    if let Some(meta) = open(txn, Q_META)? {
        for item in meta.iter()? {
            let (k, v) = item?;
            c.record();
            let q = String::from_utf8_lossy(k.value()).into_owned();
            let jobs = counted.remove(k.value()).unwrap_or_default();
            match apply::decode_meta(v.value()) {
                Err(e) => c.problem(format!("shard {shard}: queue {q:?}: {e}")),
                Ok(m) => {
                    if m.counts != jobs {
                        c.problem(format!(
                            "shard {shard}: queue {q:?}: stored counts (ready, delayed, in flight, dead) {:?} but its jobs are {jobs:?}",
                            m.counts
                        ));
                    }
                    if let Some(t) = &index {
                        let prefix = queue_prefix(&q);
                        let entries = t
                            .range(prefix.as_slice()..)?
                            .take_while(|e| {
                                e.as_ref()
                                    .map_or(true, |(k, _)| k.value().starts_with(&prefix))
                            })
                            .count() as u64;
                        if entries != jobs.iter().sum::<u64>() {
                            c.problem(format!(
                                "shard {shard}: queue {q:?}: {entries} index entries for {} jobs",
                                jobs.iter().sum::<u64>()
                            ));
                        }
                    }
                }
            }
        }
    }
    for (q, _) in counted {
        c.problem(format!(
            "shard {shard}: queue {:?} has jobs but no queue record",
            String::from_utf8_lossy(&q)
        ));
    }
    if let Some(sched) = open(txn, Q_SCHED)? {
        for item in sched.iter()? {
            let (k, v) = item?;
            c.record();
            let name = String::from_utf8_lossy(k.value()).into_owned();
            match model::decode::<Schedule>(v.value()) {
                Err(e) => c.problem(format!("shard {shard}: schedule {name:?}: {e}")),
                Ok(s) => {
                    if let Err(e) = cron::Cron::parse(&s.cron) {
                        c.problem(format!("shard {shard}: schedule {name:?}: {e}"));
                    }
                    if let Err(e) = crate::base::util::check_stored_json("payload", &s.payload) {
                        c.problem(format!("shard {shard}: schedule {name:?}: {e}"));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Creates the queue tables in a shard.
pub fn init_tables(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(Q_JOBS)?;
    txn.open_table(Q_INDEX)?;
    txn.open_table(Q_TIMERS)?;
    txn.open_table(Q_META)?;
    txn.open_table(Q_DEDUPE)?;
    txn.open_table(Q_SCHED)?;
    Ok(())
}

/// A job to enqueue.
#[derive(Debug, Clone, Default)]
pub struct NewJob {
    /// JSON text.
    pub payload: Vec<u8>,
    pub priority: u8,
    pub run_at_ms: Option<u64>,
    pub max_attempts: Option<u32>,
    pub backoff: Option<Backoff>,
    pub dedupe_key: Option<String>,
    pub dedupe_window_ms: u64,
}

/// Bounds the queue domain enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub job_bytes_max: usize,
    pub enqueue_batch_max: usize,
    pub claim_max: usize,
    pub lease_max_ms: u64,
    pub wait_max_ms: u64,
    pub list_limit_max: usize,
    pub delete_batch_max: usize,
    /// Waiting claims (long polls) across all queues; more get an immediate answer.
    pub waiters_max: usize,
    /// Cron schedules in all.
    pub schedules_max: usize,
}

/// A queue's state as `GET /v1/queues/{q}` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueStats {
    pub name: String,
    pub ready: u64,
    pub delayed: u64,
    pub in_flight: u64,
    pub dead: u64,
    pub paused: bool,
    pub oldest_ready_age_ms: Option<u64>,
    pub totals: Totals,
    pub max_depth: u64,
    pub default_lease_ms: u64,
    pub max_attempts: u32,
    pub backoff: Backoff,
}

/// The queue domain.
pub struct Queues {
    engine: Arc<Engine>,
    limits: Limits,
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    waiting: std::sync::atomic::AtomicUsize,
    /// Woken when a new timer may be earlier than the one the timer task sleeps for.
    timers_changed: Notify,
}

/// Checks a queue name: 1–64 bytes of `[A-Za-z0-9_.-]`.
pub fn validate_name(q: &str) -> Result<(), QueueError> {
    Ok(crate::base::names::validate_name("queue name", q)?)
}

fn routing_key(q: &str) -> Vec<u8> {
    let mut k = b"queue\0".to_vec();
    k.extend_from_slice(q.as_bytes());
    k
}

pub(crate) fn storage(shard: usize, e: impl Into<redb::Error>) -> QueueError {
    QueueError::Engine(crate::engine::storage_error(shard, e))
}

impl Queues {
    testing_pub! {
        /// The queue domain with its settings section of `config`.
        fn from_config(engine: Arc<Engine>, config: &crate::base::config::Config) -> Queues {
            Queues::new(
                engine,
                Limits {
                    job_bytes_max: config.queue.job_bytes_max,
                    enqueue_batch_max: config.queue.enqueue_batch_max,
                    claim_max: config.queue.claim_max,
                    lease_max_ms: config.queue.lease_max_ms,
                    wait_max_ms: config.queue.claim_wait_max_ms,
                    list_limit_max: config.kv.list_limit_max,
                    delete_batch_max: config.kv.delete_batch_keys_max,
                    waiters_max: config.queue.claim_waiters_max,
                    schedules_max: config.queue.schedules_max,
                },
            )
        }
    }

    testing_pub! {
        fn new(engine: Arc<Engine>, limits: Limits) -> Self {
            Self {
                engine,
                limits,
                waiters: Mutex::new(HashMap::new()),
                waiting: std::sync::atomic::AtomicUsize::new(0),
                timers_changed: Notify::new(),
            }
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Claims parked in a long poll right now.
    pub fn claims_waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::Acquire)
    }

    fn shard(&self, q: &str) -> usize {
        self.engine.shard_for(&routing_key(q))
    }

    async fn write<R, F>(&self, q: &str, bytes: usize, f: F) -> Result<R, QueueError>
    where
        F: FnOnce(&mut crate::engine::ApplyCtx<'_, '_>) -> apply::Res<R> + Send + 'static,
        R: Send + 'static,
    {
        self.engine.write(self.shard(q), bytes, f).await
    }

    /// As `write`, for a change that frees space or leaves it level (claim, ack, purge, …):
    /// taken while the disk is low, so queues can be drained.
    async fn write_freeing<R, F>(&self, q: &str, bytes: usize, f: F) -> Result<R, QueueError>
    where
        F: FnOnce(&mut crate::engine::ApplyCtx<'_, '_>) -> apply::Res<R> + Send + 'static,
        R: Send + 'static,
    {
        self.engine.write_freeing(self.shard(q), bytes, f).await
    }

    /// The notifier claims on `q` wait on.
    fn waiter(&self, q: &str) -> Arc<Notify> {
        let mut map = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 4096 {
            map.retain(|_, n| Arc::strong_count(n) > 1);
        }
        map.entry(q.to_string()).or_default().clone()
    }

    fn wake(&self, q: &str) {
        let map = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get(q) {
            n.notify_waiters();
        }
    }

    /// Enqueues jobs, all or nothing; 429 (`Full`) beyond `max_depth`.
    pub async fn enqueue(&self, q: &str, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, QueueError> {
        validate_name(q)?;
        if jobs.is_empty() || jobs.len() > self.limits.enqueue_batch_max {
            return Err(Invalid::RequestSize {
                verb: "enqueues",
                items: "jobs",
                max: self.limits.enqueue_batch_max,
                got: jobs.len(),
            }
            .into());
        }
        let mut bytes = 0;
        for (i, j) in jobs.iter().enumerate() {
            if j.payload.len() > self.limits.job_bytes_max {
                return Err(QueueError::TooLarge {
                    job: Some(i),
                    len: j.payload.len(),
                    max: self.limits.job_bytes_max,
                });
            }
            crate::base::util::check_stored_json("payload", &j.payload)
                .map_err(|e| e.at(ItemKind::Job, i))?;
            if j.priority > 9 {
                return Err(Invalid::OutOfRange {
                    field: "priority",
                    min: 0,
                    max: 9,
                }
                .at(ItemKind::Job, i)
                .into());
            }
            if j.max_attempts == Some(0) {
                return Err(Invalid::OutOfRange {
                    field: "max_attempts",
                    min: 1,
                    max: u32::MAX as u64,
                }
                .at(ItemKind::Job, i)
                .into());
            }
            if let Some(b) = &j.backoff {
                b.validate().map_err(|e| e.at(ItemKind::Job, i))?;
            }
            if j.dedupe_key
                .as_ref()
                .is_some_and(|k| k.is_empty() || k.len() > 512)
            {
                return Err(Invalid::Length {
                    field: "dedupe_key",
                    min: 1,
                    max: 512,
                }
                .at(ItemKind::Job, i)
                .into());
            }
            bytes += j.payload.len();
        }
        let now = self.engine.now_ms();
        let delayed = jobs.iter().any(|j| j.run_at_ms.is_some_and(|t| t > now));
        let name = q.to_string();
        let out = self
            .write(q, bytes, move |ctx| apply::enqueue(ctx, &name, &jobs))
            .await?;
        self.wake(q);
        if delayed {
            self.timers_changed.notify_one();
        }
        Ok(out)
    }

    /// Claims up to `max` ready jobs with a lease of `lease_ms` (`None`: the queue's
    /// `default_lease_ms`), waiting up to `wait` for one.
    /// A caller that leaves while it waits (`caller`) takes nothing: the wait ends with no jobs,
    /// and no claim is made for it after it left.
    pub async fn claim(
        &self,
        q: &str,
        max: usize,
        lease_ms: Option<u64>,
        wait: Duration,
        caller: &crate::engine::departure::Departure,
    ) -> Result<Vec<Job>, QueueError> {
        validate_name(q)?;
        if max == 0 || max > self.limits.claim_max {
            return Err(Invalid::OutOfRange {
                field: "max",
                min: 1,
                max: self.limits.claim_max as u64,
            }
            .into());
        }
        self.check_lease(lease_ms)?;
        if wait.as_millis() as u64 > self.limits.wait_max_ms {
            return Err(Invalid::DurationTooLong {
                field: "wait",
                max_ms: self.limits.wait_max_ms,
            }
            .into());
        }
        let lease_max_ms = self.limits.lease_max_ms;
        let deadline = tokio::time::Instant::now() + wait;
        let mut waited = false;
        loop {
            let notify = self.waiter(q);
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // What is ready when the claim arrives is the caller's (a client that closed only
            // its sending side still reads its answer); after a wait, a caller that left gets
            // nothing.
            if waited && caller.gone() {
                return Ok(Vec::new());
            }
            waited = true;
            let name = q.to_string();
            let jobs = self
                .write_freeing(q, 64, move |ctx| {
                    apply::claim(ctx, &name, max, lease_ms, lease_max_ms)
                })
                .await?;
            if !jobs.is_empty() {
                self.timers_changed.notify_one();
                return Ok(jobs);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(jobs);
            }
            // Bound the number of parked claims; past it, answer empty now.
            use std::sync::atomic::Ordering;
            if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.limits.waiters_max {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                return Ok(jobs);
            }
            let stopping = tokio::select! {
                _ = tokio::time::timeout_at(deadline, notified) => false,
                // Shutdown answers a parked claim at once, with what there is (nothing).
                _ = self.engine.stopping() => true,
                // A caller that left takes nothing.
                _ = caller.left() => true,
            };
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            if stopping {
                return Ok(jobs);
            }
        }
    }

    pub async fn ack(&self, q: &str, id: u64, token: &str) -> Result<(), QueueError> {
        validate_name(q)?;
        let (name, token) = (q.to_string(), token.to_string());
        self.write_freeing(q, 0, move |ctx| apply::ack(ctx, &name, id, &token))
            .await
    }

    pub async fn nack(&self, q: &str, id: u64, token: &str, n: Nack) -> Result<State, QueueError> {
        validate_name(q)?;
        if n.error.as_ref().is_some_and(|e| e.len() > 4096) {
            return Err(Invalid::TooLong {
                field: "error",
                max: 4096,
            }
            .into());
        }
        let (name, token) = (q.to_string(), token.to_string());
        let jitter: f64 = rand::random();
        let state = self
            .write_freeing(q, 0, move |ctx| {
                apply::nack(ctx, &name, id, &token, &n, jitter)
            })
            .await?;
        match state {
            State::Ready => self.wake(q),
            State::Delayed => self.timers_changed.notify_one(),
            _ => {}
        }
        Ok(state)
    }

    pub async fn extend(
        &self,
        q: &str,
        id: u64,
        token: &str,
        lease_ms: Option<u64>,
    ) -> Result<u64, QueueError> {
        validate_name(q)?;
        self.check_lease(lease_ms)?;
        let lease_max_ms = self.limits.lease_max_ms;
        let (name, token) = (q.to_string(), token.to_string());
        self.write_freeing(q, 0, move |ctx| {
            apply::extend(ctx, &name, id, &token, lease_ms, lease_max_ms)
        })
        .await
    }

    pub async fn cancel(&self, q: &str, id: u64) -> Result<(), QueueError> {
        validate_name(q)?;
        let name = q.to_string();
        self.write_freeing(q, 0, move |ctx| apply::cancel(ctx, &name, id))
            .await
    }

    /// Requeues the given dead jobs, or all of them (in bounded commits).
    pub async fn requeue(&self, q: &str, ids: Option<Vec<u64>>) -> Result<u64, QueueError> {
        validate_name(q)?;
        let max = self.limits.delete_batch_max;
        if ids.as_ref().is_some_and(|ids| ids.len() > max) {
            return Err(Invalid::AtMost {
                items: "ids",
                max,
                per: "request",
            }
            .into());
        }
        let mut total = 0;
        loop {
            let (name, ids) = (q.to_string(), ids.clone());
            let (n, more) = self
                .write_freeing(q, 0, move |ctx| {
                    apply::requeue(ctx, &name, ids.as_deref(), max)
                })
                .await?;
            total += n;
            if !more {
                break;
            }
        }
        if total > 0 {
            self.wake(q);
        }
        Ok(total)
    }

    /// Deletes every job in a state, in bounded commits.
    pub async fn purge(&self, q: &str, state: State) -> Result<u64, QueueError> {
        validate_name(q)?;
        let max = self.limits.delete_batch_max;
        let mut total = 0;
        loop {
            let name = q.to_string();
            let (n, more) = self
                .write_freeing(q, 0, move |ctx| apply::purge(ctx, &name, state, max))
                .await?;
            total += n;
            if !more {
                return Ok(total);
            }
        }
    }

    /// Sets config and/or the pause flag.
    pub async fn configure(
        &self,
        q: &str,
        config: Option<QueueConfig>,
        paused: Option<bool>,
    ) -> Result<QueueMeta, QueueError> {
        validate_name(q)?;
        if let Some(c) = &config {
            c.validate(self.limits.lease_max_ms)?;
        }
        let name = q.to_string();
        let meta = self
            .write(q, 0, move |ctx| {
                apply::configure(ctx, &name, config, paused)
            })
            .await?;
        if paused == Some(false) {
            self.wake(q);
        }
        Ok(meta)
    }

    /// Reads one job.
    pub fn get(&self, q: &str, id: u64) -> Result<Option<Job>, QueueError> {
        validate_name(q)?;
        let shard = self.shard(q);
        let txn = self.engine.shards()[shard].read()?;
        let jobs = txn.open_table(Q_JOBS).map_err(|e| storage(shard, e))?;
        let got = jobs
            .get(job_key(q, id).as_slice())
            .map_err(|e| storage(shard, e))?;
        got.map(|g| apply::decode_job(g.value())).transpose()
    }

    /// Lists jobs in a state without claiming them. The cursor is opaque.
    pub fn list(
        &self,
        q: &str,
        state: State,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Job>, Option<String>), QueueError> {
        validate_name(q)?;
        if limit == 0 || limit > self.limits.list_limit_max {
            return Err(Invalid::OutOfRange {
                field: "limit",
                min: 1,
                max: self.limits.list_limit_max as u64,
            }
            .into());
        }
        let prefix = index_prefix(q, state);
        let start = match after {
            None => prefix.clone(),
            Some(c) => base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .filter(|k| k.starts_with(&prefix))
                .ok_or(QueueError::Invalid(Invalid::BadStateCursor))?,
        };
        let shard = self.shard(q);
        let txn = self.engine.shards()[shard].read()?;
        let index = txn.open_table(Q_INDEX).map_err(|e| storage(shard, e))?;
        let jobs = txn.open_table(Q_JOBS).map_err(|e| storage(shard, e))?;
        let mut out = Vec::new();
        let mut last = None;
        let mut more = false;
        for item in index
            .range(start.as_slice()..)
            .map_err(|e| storage(shard, e))?
        {
            let (k, _) = item.map_err(|e| storage(shard, e))?;
            let k = k.value();
            if !k.starts_with(&prefix) {
                break;
            }
            if after.is_some() && k == start.as_slice() {
                continue;
            }
            if out.len() == limit {
                more = true;
                break;
            }
            let Some(id) = id_of_index_key(k) else {
                continue;
            };
            if let Some(g) = jobs
                .get(job_key(q, id).as_slice())
                .map_err(|e| storage(shard, e))?
            {
                out.push(apply::decode_job(g.value())?);
                last = Some(k.to_vec());
            }
        }
        let cursor = if more {
            last.map(|k| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k))
        } else {
            None
        };
        Ok((out, cursor))
    }

    /// Stats of one queue; `None` if it was never used.
    pub fn stats(&self, q: &str) -> Result<Option<QueueStats>, QueueError> {
        validate_name(q)?;
        let shard = self.shard(q);
        let txn = self.engine.shards()[shard].read()?;
        let metas = txn.open_table(Q_META).map_err(|e| storage(shard, e))?;
        let Some(g) = metas.get(q.as_bytes()).map_err(|e| storage(shard, e))? else {
            return Ok(None);
        };
        let meta = apply::decode_meta(g.value())?;
        // The oldest ready job: the first entry of each priority's run-at ordering.
        let index = txn.open_table(Q_INDEX).map_err(|e| storage(shard, e))?;
        let mut oldest: Option<u64> = None;
        for prio in 0u8..=9 {
            let mut p = index_prefix(q, State::Ready);
            p.push(prio);
            if let Some(item) = index
                .range(p.as_slice()..)
                .map_err(|e| storage(shard, e))?
                .next()
            {
                let (k, _) = item.map_err(|e| storage(shard, e))?;
                let k = k.value();
                if k.starts_with(&p) && k.len() >= p.len() + 8 {
                    let t =
                        u64::from_be_bytes(k[p.len()..p.len() + 8].try_into().unwrap_or([0; 8]));
                    oldest = Some(oldest.map_or(t, |o| o.min(t)));
                }
            }
        }
        let now = self.engine.now_ms();
        Ok(Some(QueueStats {
            name: q.to_string(),
            ready: meta.count(State::Ready),
            delayed: meta.count(State::Delayed),
            in_flight: meta.count(State::InFlight),
            dead: meta.count(State::Dead),
            paused: meta.paused,
            oldest_ready_age_ms: oldest.map(|t| now.saturating_sub(t)),
            totals: meta.totals,
            max_depth: meta.config.max_depth,
            default_lease_ms: meta.config.default_lease_ms,
            max_attempts: meta.config.max_attempts,
            backoff: meta.config.backoff,
        }))
    }

    /// Every queue's stats, by name.
    pub fn all_stats(&self) -> Result<Vec<QueueStats>, QueueError> {
        Ok(self.page_stats(None, usize::MAX)?.0)
    }

    /// Stats of at most `limit` queues in name order after `after`, and the cursor of the next
    /// page (the last name) when more follow. Only the page's queues are read.
    pub fn page_stats(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<QueueStats>, Option<String>), QueueError> {
        let mut names = Vec::new();
        for shard in self.engine.shards() {
            let txn = shard.read()?;
            let metas = txn.open_table(Q_META).map_err(|e| storage(shard.id, e))?;
            for item in metas.iter().map_err(|e| storage(shard.id, e))? {
                let (k, _) = item.map_err(|e| storage(shard.id, e))?;
                names.push(String::from_utf8_lossy(k.value()).into_owned());
            }
        }
        names.sort();
        crate::base::util::page_by_name(names, after, limit, |n| self.stats(n))
    }

    /// The queue's configured default lease.
    /// A lease a caller asked for: 1 ms to `lease_max_ms` (a queue's default was checked when
    /// it was configured).
    fn check_lease(&self, lease_ms: Option<u64>) -> Result<(), QueueError> {
        match lease_ms {
            Some(l) if l == 0 || l > self.limits.lease_max_ms => Err(Invalid::DurationRange {
                field: "lease",
                max_ms: self.limits.lease_max_ms,
            }
            .into()),
            _ => Ok(()),
        }
    }

    /// Runs due timers on every shard once; returns how many queues gained ready jobs.
    pub async fn promote_once(&self) -> Result<usize, QueueError> {
        let mut woken = 0;
        for shard in 0..self.engine.shards().len() {
            if self
                .next_due(shard)?
                .is_some_and(|t| t <= self.engine.now_ms())
            {
                let queues = self
                    .engine
                    .write_freeing(shard, 0, |ctx| apply::promote(ctx, 1000))
                    .await?;
                for q in &queues {
                    self.wake(q);
                }
                woken += queues.len();
            }
        }
        Ok(woken)
    }

    /// The earliest timer of a shard.
    fn next_due(&self, shard: usize) -> Result<Option<u64>, QueueError> {
        let txn = self.engine.shards()[shard].read()?;
        let timers = txn.open_table(Q_TIMERS).map_err(|e| storage(shard, e))?;
        let first = timers.first().map_err(|e| storage(shard, e))?;
        Ok(first.and_then(|(k, _)| parse_timer(k.value()).map(|(due, ..)| due)))
    }

    /// The timer task: sleeps until the earliest due timer (or `tick_max`, or a new timer), then
    /// promotes. Delays elapse and leases expire on time whether or not claims arrive.
    pub async fn run_timers(self: Arc<Self>, tick_max: Duration) {
        loop {
            if self.engine.is_closing() {
                return;
            }
            if let Err(e) = self.promote_once().await {
                tracing::warn!(error = %e, "queue timers");
            }
            let now = self.engine.now_ms();
            let mut sleep_ms = tick_max.as_millis() as u64;
            for shard in 0..self.engine.shards().len() {
                if let Ok(Some(due)) = self.next_due(shard) {
                    sleep_ms = sleep_ms.min(due.saturating_sub(now));
                }
            }
            let sleep = Duration::from_millis(sleep_ms.max(1));
            let _ = tokio::time::timeout(sleep, self.timers_changed.notified()).await;
        }
    }
}

impl crate::engine::Domain for Queues {
    fn background(
        self: Arc<Self>,
        config: &crate::base::config::Config,
    ) -> Vec<futures_util::future::BoxFuture<'static, ()>> {
        vec![
            Box::pin(
                self.clone()
                    .run_timers(Duration::from_millis(config.queue.queue_tick_max_ms)),
            ),
            Box::pin(self.run_schedules()),
        ]
    }
    fn render_metrics(&self, out: &mut String) {
        crate::base::metrics::gauge(
            out,
            "shardbox_queue_claims_waiting",
            "Claims parked in a long poll.",
            self.claims_waiting() as u64,
        );
    }
}
