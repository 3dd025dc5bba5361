//! Cron schedules: each enqueues a job into its queue at every tick (UTC, minute resolution).
//! A schedule lives in the shard of the queue it feeds, so the enqueue and the record of the
//! tick are one commit.

use super::apply;
use super::cron::Cron;
use super::model::{self, Schedule, Q_SCHED, RECORD_VERSION};
use super::{storage, validate_name, Queues};
use crate::base::invalid::Invalid;
use crate::queue::QueueError;
use redb::ReadableTable;
use std::time::Duration;

/// What a client asks for when it puts a schedule.
#[derive(Debug, Clone)]
pub struct ScheduleSpec {
    pub cron: String,
    pub queue: String,
    /// JSON text.
    pub payload: Vec<u8>,
    pub priority: u8,
    pub max_attempts: Option<u32>,
}

impl Queues {
    /// Every schedule with the shard it lives in.
    fn scan_schedules(&self) -> Result<Vec<(usize, Schedule)>, QueueError> {
        let mut out = Vec::new();
        for shard in self.engine.shards() {
            let txn = shard.read()?;
            let t = txn.open_table(Q_SCHED).map_err(|e| storage(shard.id, e))?;
            for item in t.iter().map_err(|e| storage(shard.id, e))? {
                let (_, v) = item.map_err(|e| storage(shard.id, e))?;
                let s: Schedule = model::decode(v.value()).map_err(QueueError::Corrupt)?;
                out.push((shard.id, s));
            }
        }
        out.sort_by(|a, b| a.1.name.cmp(&b.1.name));
        Ok(out)
    }

    pub fn list_schedules(&self) -> Result<Vec<Schedule>, QueueError> {
        Ok(self.scan_schedules()?.into_iter().map(|(_, s)| s).collect())
    }

    pub fn get_schedule(&self, name: &str) -> Result<Option<Schedule>, QueueError> {
        validate_schedule_name(name)?;
        Ok(self
            .scan_schedules()?
            .into_iter()
            .find(|(_, s)| s.name == name)
            .map(|(_, s)| s))
    }

    /// Creates or replaces a schedule; returns (created, stored).
    pub async fn put_schedule(
        &self,
        name: &str,
        spec: ScheduleSpec,
    ) -> Result<(bool, Schedule), QueueError> {
        validate_schedule_name(name)?;
        validate_name(&spec.queue)?;
        let cron = Cron::parse(&spec.cron).map_err(Invalid::Cron)?;
        if spec.payload.len() > self.limits.job_bytes_max {
            return Err(QueueError::TooLarge {
                job: None,
                len: spec.payload.len(),
                max: self.limits.job_bytes_max,
            });
        }
        crate::base::util::check_stored_json("payload", &spec.payload)?;
        if spec.priority > 9 {
            return Err(Invalid::OutOfRange {
                field: "priority",
                min: 0,
                max: 9,
            }
            .into());
        }
        let all = self.scan_schedules()?;
        let target = self.shard(&spec.queue);
        let existing = all.iter().find(|(_, s)| s.name == name);
        if existing.is_none() && all.len() >= self.limits.schedules_max {
            return Err(Invalid::ScheduleLimit { count: all.len() }.into());
        }
        // Moving to another queue's shard: remove it from the old one first.
        if let Some((shard, _)) = existing.filter(|(shard, _)| *shard != target) {
            let n = name.to_string();
            self.engine
                .write(*shard, 0, move |ctx| apply::delete_schedule(ctx, &n))
                .await?;
        }
        let now = self.engine.now_ms();
        let sched = Schedule {
            version: RECORD_VERSION,
            name: name.to_string(),
            cron: cron.as_str().to_string(),
            queue: spec.queue,
            payload: spec.payload,
            priority: spec.priority,
            max_attempts: spec.max_attempts,
            created_ms: now,
            updated_ms: now,
            last_fire_ms: None,
            next_fire_ms: cron.next_after(now),
            fired: 0,
            last_error: None,
        };
        let bytes = sched.payload.len();
        let (created, stored) = self
            .engine
            .write(target, bytes, move |ctx| apply::put_schedule(ctx, sched))
            .await?;
        self.timers_changed.notify_one();
        Ok((created && existing.is_none(), stored))
    }

    pub async fn delete_schedule(&self, name: &str) -> Result<bool, QueueError> {
        validate_schedule_name(name)?;
        let Some((shard, _)) = self
            .scan_schedules()?
            .into_iter()
            .find(|(_, s)| s.name == name)
        else {
            return Ok(false);
        };
        let n = name.to_string();
        self.engine
            .write_freeing(shard, 0, move |ctx| apply::delete_schedule(ctx, &n))
            .await
    }

    /// Fires every due schedule once; returns how many enqueued.
    pub async fn fire_due_schedules(&self) -> Result<usize, QueueError> {
        let now = self.engine.now_ms();
        let mut fired = 0;
        for (shard, s) in self.scan_schedules()? {
            if s.next_fire_ms.is_some_and(|t| t <= now) {
                let name = s.name.clone();
                if let Some(q) = self
                    .engine
                    .write(shard, 0, move |ctx| apply::fire(ctx, &name))
                    .await?
                {
                    self.wake(&q);
                    fired += 1;
                }
            }
        }
        Ok(fired)
    }

    /// The schedule task: checks every second (ticks are whole minutes).
    pub async fn run_schedules(self: std::sync::Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.engine.is_closing() {
                return;
            }
            if let Err(e) = self.fire_due_schedules().await {
                tracing::warn!(error = %e, "schedules");
            }
        }
    }
}

/// Schedule names follow the queue name rules.
pub fn validate_schedule_name(name: &str) -> Result<(), QueueError> {
    Ok(crate::base::names::validate_name("schedule name", name)?)
}
