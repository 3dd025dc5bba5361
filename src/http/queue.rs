//! Queue handlers: parse the request, call the queue domain, render the answer.

use super::body::ReqBody;
use super::input::{duration, json_body, json_items, limit_param, query};
use super::response::{self, Resp};
use super::route_table::{route, RouteDef};
use super::ServerState;
use crate::base::util::parse_time_ms;
use crate::http::error::ApiError;
use crate::queue::apply::Nack;
use crate::queue::model::{Backoff, Job, QueueConfig, State};
use crate::queue::QueueError;
use crate::queue::{validate_name, NewJob};
use hyper::Request;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::time::Duration;

/// The queue and schedule routes.
pub(super) const ROUTES: &[RouteDef] = &[
    route!(now "GET", "/v1/queues", ["limit", "after"], |s, p, r| {
        list_queues(s, &r)
    }),
    route!(now "GET", "/v1/queues/{q}", [], |s, p, r| stats(s, p.get("q"))),
    route!("PUT", "/v1/queues/{q}", [], |s, p, r| configure(
        &s,
        p.get("q"),
        r
    )
    .await),
    route!("POST", "/v1/queues/{q}:pause", [], |s, p, r| pause(
        &s,
        p.get("q"),
        true
    )
    .await),
    route!("POST", "/v1/queues/{q}:resume", [], |s, p, r| pause(
        &s,
        p.get("q"),
        false
    )
    .await),
    route!(idempotent "POST", "/v1/queues/{q}/jobs", [], |s, p, r| enqueue(
        &s,
        p.get("q"),
        r
    )
    .await),
    route!(
        now "GET",
        "/v1/queues/{q}/jobs",
        ["state", "limit", "after"],
        |s, p, r| list_jobs(s, p.get("q"), &r)
    ),
    route!("DELETE", "/v1/queues/{q}/jobs", ["state"], |s, p, r| purge(
        &s,
        p.get("q"),
        &r
    )
    .await),
    route!("POST", "/v1/queues/{q}/claim", [], |s, p, r| claim(
        &s,
        p.get("q"),
        r
    )
    .await),
    route!(now "GET", "/v1/queues/{q}/jobs/{id}", [], |s, p, r| get_job(
        s,
        p.get("q"),
        p.get("id")
    )),
    route!("DELETE", "/v1/queues/{q}/jobs/{id}", [], |s, p, r| cancel(
        &s,
        p.get("q"),
        p.get("id")
    )
    .await),
    route!("POST", "/v1/queues/{q}/jobs/{id}/ack", [], |s, p, r| {
        job_action(&s, p.get("q"), p.get("id"), JobAction::Ack, r).await
    }),
    route!("POST", "/v1/queues/{q}/jobs/{id}/nack", [], |s, p, r| {
        job_action(&s, p.get("q"), p.get("id"), JobAction::Nack, r).await
    }),
    route!("POST", "/v1/queues/{q}/jobs/{id}/extend", [], |s, p, r| {
        job_action(&s, p.get("q"), p.get("id"), JobAction::Extend, r).await
    }),
    route!("POST", "/v1/queues/{q}/dead:requeue", [], |s, p, r| {
        requeue(&s, p.get("q"), r).await
    }),
    route!(now "GET", "/v1/schedules", [], |s, p, r| list_schedules(s)),
    route!(now "GET", "/v1/schedules/{name}", [], |s, p, r| get_schedule(
        s,
        p.get("name")
    )),
    route!("PUT", "/v1/schedules/{name}", [], |s, p, r| put_schedule(
        &s,
        p.get("name"),
        r
    )
    .await),
    route!("DELETE", "/v1/schedules/{name}", [], |s, p, r| {
        delete_schedule(&s, p.get("name")).await
    }),
];

/// Default dedupe window when a job names a `dedupe_key` but no window.
const DEDUPE_WINDOW_DEFAULT_MS: u64 = 5 * 60_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackoffReq {
    base: Option<String>,
    factor: Option<f64>,
    max: Option<String>,
}

impl BackoffReq {
    fn into_backoff(self, default: Backoff) -> Result<Backoff, ApiError> {
        let b = Backoff {
            base_ms: self
                .base
                .as_deref()
                .map(|v| duration("backoff.base", v))
                .transpose()?
                .unwrap_or(default.base_ms),
            factor: self.factor.unwrap_or(default.factor),
            max_ms: self
                .max
                .as_deref()
                .map(|v| duration("backoff.max", v))
                .transpose()?
                .unwrap_or(default.max_ms),
        };
        // Its range is the domain's rule (Backoff::validate), checked at enqueue and configure.
        Ok(b)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnqueueReq {
    payload: Box<RawValue>,
    delay: Option<String>,
    run_at: Option<serde_json::Value>,
    priority: Option<u8>,
    max_attempts: Option<u32>,
    #[serde(default, deserialize_with = "crate::base::json_object::object_opt")]
    backoff: Option<BackoffReq>,
    dedupe_key: Option<String>,
    dedupe_window: Option<String>,
}

impl EnqueueReq {
    fn into_job(self, now_ms: u64) -> Result<NewJob, ApiError> {
        let run_at_ms = match (&self.delay, &self.run_at) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request("give delay or run_at, not both"))
            }
            (Some(d), None) => Some(now_ms.saturating_add(duration("delay", d)?)),
            (None, Some(serde_json::Value::Number(n))) => Some(n.as_u64().ok_or_else(|| {
                ApiError::bad_request("run_at must be ms since the epoch or RFC 3339")
            })?),
            (None, Some(serde_json::Value::String(s))) => {
                Some(parse_time_ms(s).map_err(|e| ApiError::bad_request(format!("run_at: {e}")))?)
            }
            (None, Some(_)) => {
                return Err(ApiError::bad_request(
                    "run_at must be ms since the epoch or RFC 3339",
                ))
            }
            (None, None) => None,
        };
        Ok(NewJob {
            payload: self.payload.get().as_bytes().to_vec(),
            priority: self.priority.unwrap_or(0),
            run_at_ms,
            max_attempts: self.max_attempts,
            backoff: self
                .backoff
                .map(|b| b.into_backoff(Backoff::default()))
                .transpose()?,
            dedupe_key: self.dedupe_key,
            dedupe_window_ms: self
                .dedupe_window
                .as_deref()
                .map(|w| duration("dedupe_window", w))
                .transpose()?
                .unwrap_or(DEDUPE_WINDOW_DEFAULT_MS),
        })
    }
}

/// `POST /v1/queues/{q}/jobs`: one JSON job, or NDJSON (one job per line), all or nothing.
pub async fn enqueue(
    state: &ServerState,
    q: &str,
    req: Request<ReqBody>,
) -> Result<Resp, ApiError> {
    validate_name(q)?;
    let now = state.store.engine().now_ms();
    let max = state.store.config().queue.enqueue_batch_max;
    let (jobs, ndjson) = json_items(state, req, max, "enqueue_batch_max", |r: EnqueueReq| {
        r.into_job(now)
    })
    .await?;
    let out = state.store.queues().enqueue(q, jobs).await?;
    #[derive(Serialize)]
    struct Enqueued {
        id: String,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
    }
    let item = |e: &crate::queue::apply::Enqueued| Enqueued {
        id: e.id.to_string(),
        duplicate: e.duplicate,
    };
    if ndjson {
        #[derive(Serialize)]
        struct Batch {
            jobs: Vec<BatchItem>,
        }
        #[derive(Serialize)]
        struct BatchItem {
            id: String,
            duplicate: bool,
        }
        let jobs = out
            .iter()
            .map(|e| BatchItem {
                id: e.id.to_string(),
                duplicate: e.duplicate,
            })
            .collect();
        return Ok(response::json_of(201, &Batch { jobs }));
    }
    let e = out
        .first()
        .ok_or_else(|| ApiError::new(500, "internal", "no job enqueued"))?;
    Ok(response::json_of(
        if e.duplicate { 200 } else { 201 },
        &item(e),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ClaimReq {
    max: Option<usize>,
    lease: Option<String>,
    wait: Option<String>,
}

/// A stored JSON document as it was accepted. It was checked at the door (valid JSON, at most
/// [`crate::base::util::JSON_DEPTH_MAX`] deep) and is written back verbatim, never re-parsed into a
/// `serde_json::Value`; `null` only if the stored bytes were damaged.
pub(super) fn stored_json(bytes: &[u8]) -> Box<RawValue> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| RawValue::from_string(s.to_string()).ok())
        .unwrap_or_else(null_json)
}

fn null_json() -> Box<RawValue> {
    // "null" is valid JSON; the fallback of the fallback is never taken.
    RawValue::from_string("null".into()).unwrap_or_default()
}

/// A job as the API shows it.
#[derive(Serialize)]
struct JobOut<'a> {
    id: String,
    queue: &'a str,
    state: &'static str,
    payload: Box<RawValue>,
    priority: u8,
    attempts: u32,
    max_attempts: u32,
    run_at: u64,
    enqueued_at: u64,
    updated_at: u64,
    last_error: &'a Option<String>,
    dedupe_key: &'a Option<String>,
    lease_expires_at: Option<u64>,
}

fn job_out<'a>(q: &'a str, job: &'a Job) -> JobOut<'a> {
    JobOut {
        id: job.id.to_string(),
        queue: q,
        state: job.state.name(),
        payload: stored_json(&job.payload),
        priority: job.priority,
        attempts: job.attempts,
        max_attempts: job.max_attempts,
        run_at: job.run_at_ms,
        enqueued_at: job.enqueued_ms,
        updated_at: job.updated_ms,
        last_error: &job.last_error,
        dedupe_key: &job.dedupe_key,
        lease_expires_at: (job.state == State::InFlight).then_some(job.lease_until_ms),
    }
}

/// `POST /v1/queues/{q}/claim`
pub async fn claim(state: &ServerState, q: &str, req: Request<ReqBody>) -> Result<Resp, ApiError> {
    validate_name(q)?;
    let empty = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() == b"0");
    let r: ClaimReq = if empty {
        ClaimReq::default()
    } else {
        json_body(state, req).await?
    };
    let queues = state.store.queues();
    let lease_ms = r
        .lease
        .as_deref()
        .map(|l| duration("lease", l))
        .transpose()?;
    let wait = Duration::from_millis(
        r.wait
            .as_deref()
            .map(|w| duration("wait", w))
            .transpose()?
            .unwrap_or(0),
    );
    // A long poll holds one of long_polls_max places (beyond them it answers at once, as the
    // domain does past claim_waiters_max) and watches its client: one that hangs up while it
    // waits takes no job.
    let waiting = if wait.is_zero() {
        None
    } else {
        state.waiting()
    };
    let (wait, caller) = match &waiting {
        Some(w) => (wait, w.departure()),
        None => (Duration::ZERO, crate::engine::departure::Departure::never()),
    };
    let jobs = queues
        .claim(q, r.max.unwrap_or(1), lease_ms, wait, &caller)
        .await?;
    drop(waiting);
    Ok(response::json_bytes(200, claimed_body(&jobs)))
}

/// The claim reply, written straight: each stored payload goes in as it is stored — it was
/// checked as JSON when it was enqueued (or imported), so it is not parsed again per claim;
/// bytes that are not UTF-8 (a damaged record) show as `null`. Each job: `id` (a string),
/// `payload`, `attempt`, `priority`, `lease_token`, `lease_expires_at`, `enqueued_at`.
fn claimed_body(jobs: &[crate::queue::model::Job]) -> Vec<u8> {
    use std::io::Write;
    let size: usize = jobs.iter().map(|j| j.payload.len() + 176).sum();
    let mut out = Vec::with_capacity(12 + size);
    out.extend_from_slice(b"{\"jobs\":[");
    for (i, j) in jobs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = write!(out, "{{\"id\":\"{}\",\"payload\":", j.id);
        match std::str::from_utf8(&j.payload) {
            Ok(p) if !p.trim().is_empty() => out.extend_from_slice(p.as_bytes()),
            _ => out.extend_from_slice(b"null"),
        }
        let _ = write!(
            out,
            ",\"attempt\":{},\"priority\":{},\"lease_token\":",
            j.attempts, j.priority
        );
        let _ = serde_json::to_writer(&mut out, &j.lease_token);
        let _ = write!(
            out,
            ",\"lease_expires_at\":{},\"enqueued_at\":{}}}",
            j.lease_until_ms, j.enqueued_ms
        );
    }
    out.extend_from_slice(b"]}");
    out
}

fn job_id(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "job id must be the number enqueue returned, got `{id}`"
        ))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseReq {
    lease_token: String,
    error: Option<String>,
    delay: Option<String>,
    dead: Option<bool>,
    lease: Option<String>,
}

/// What a worker does with its leased job.
#[derive(Debug, Clone, Copy)]
pub enum JobAction {
    Ack,
    Nack,
    Extend,
}

impl JobAction {
    fn name(self) -> &'static str {
        match self {
            JobAction::Ack => "ack",
            JobAction::Nack => "nack",
            JobAction::Extend => "extend",
        }
    }
}

/// `POST /v1/queues/{q}/jobs/{id}/ack|nack|extend`
pub async fn job_action(
    state: &ServerState,
    q: &str,
    id: &str,
    action: JobAction,
    req: Request<ReqBody>,
) -> Result<Resp, ApiError> {
    validate_name(q)?;
    let id = job_id(id)?;
    let r: LeaseReq = json_body(state, req).await?;
    let queues = state.store.queues();
    let only = |allowed: &[&str]| -> Result<(), ApiError> {
        let given = [
            ("error", r.error.is_some()),
            ("delay", r.delay.is_some()),
            ("dead", r.dead.is_some()),
            ("lease", r.lease.is_some()),
        ];
        match given
            .iter()
            .find(|(name, set)| *set && !allowed.contains(name))
        {
            Some((name, _)) => Err(ApiError::bad_request(format!(
                "`{name}` does not apply to {}",
                action.name()
            ))),
            None => Ok(()),
        }
    };
    match action {
        JobAction::Ack => {
            only(&[])?;
            queues.ack(q, id, &r.lease_token).await?;
            Ok(response::empty(204))
        }
        JobAction::Nack => {
            only(&["error", "delay", "dead"])?;
            let n = Nack {
                error: r.error.clone(),
                delay_ms: r
                    .delay
                    .as_deref()
                    .map(|d| duration("delay", d))
                    .transpose()?,
                dead: r.dead.unwrap_or(false),
            };
            queues.nack(q, id, &r.lease_token, n).await?;
            Ok(response::empty(204))
        }
        JobAction::Extend => {
            only(&["lease"])?;
            let lease = r
                .lease
                .as_deref()
                .map(|l| duration("lease", l))
                .transpose()?;
            let until = queues.extend(q, id, &r.lease_token, lease).await?;
            Ok(response::json(
                200,
                &serde_json::json!({"lease_expires_at": until}),
            ))
        }
    }
}

/// `GET /v1/queues/{q}/jobs/{id}`
pub fn get_job(state: &ServerState, q: &str, id: &str) -> Result<Resp, ApiError> {
    let id = job_id(id)?;
    let job = state
        .store
        .queues()
        .get(q, id)?
        .ok_or(QueueError::JobNotFound(id))?;
    Ok(response::json_of(200, &job_out(q, &job)))
}

/// `DELETE /v1/queues/{q}/jobs/{id}`
pub async fn cancel(state: &ServerState, q: &str, id: &str) -> Result<Resp, ApiError> {
    let id = job_id(id)?;
    state.store.queues().cancel(q, id).await?;
    Ok(response::empty(204))
}

fn state_param(
    q: &std::collections::HashMap<String, String>,
    required: bool,
) -> Result<Option<State>, ApiError> {
    match q.get("state") {
        Some(s) => State::parse(s).map(Some).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state must be ready, delayed, in_flight or dead, got `{s}`"
            ))
        }),
        None if required => Err(ApiError::bad_request(
            "give ?state=ready|delayed|in_flight|dead",
        )),
        None => Ok(None),
    }
}

/// `GET /v1/queues/{q}/jobs?state=&limit=&after=`
pub fn list_jobs(state: &ServerState, q: &str, req: &Request<ReqBody>) -> Result<Resp, ApiError> {
    let params = query(req);
    let st = state_param(&params, true)?.unwrap_or(State::Ready);
    let limit = limit_param(&params)?;
    let after = params
        .get("after")
        .map(String::as_str)
        .filter(|a| !a.is_empty());
    let (jobs, cursor) = state.store.queues().list(q, st, after, limit)?;
    #[derive(Serialize)]
    struct Page<'a> {
        jobs: Vec<JobOut<'a>>,
        cursor: Option<String>,
    }
    let jobs = jobs.iter().map(|j| job_out(q, j)).collect();
    Ok(response::json_of(200, &Page { jobs, cursor }))
}

/// `DELETE /v1/queues/{q}/jobs?state=`
pub async fn purge(state: &ServerState, q: &str, req: &Request<ReqBody>) -> Result<Resp, ApiError> {
    let st = state_param(&query(req), true)?.unwrap_or(State::Ready);
    let n = state.store.queues().purge(q, st).await?;
    Ok(response::json(200, &serde_json::json!({"purged": n})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequeueReq {
    ids: Option<Vec<String>>,
    all: Option<bool>,
}

/// `POST /v1/queues/{q}/dead:requeue`
pub async fn requeue(
    state: &ServerState,
    q: &str,
    req: Request<ReqBody>,
) -> Result<Resp, ApiError> {
    validate_name(q)?;
    let r: RequeueReq = json_body(state, req).await?;
    let ids = match (r.ids, r.all) {
        (Some(ids), None | Some(false)) => Some(
            ids.iter()
                .map(|i| job_id(i))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        (None, Some(true)) => None,
        _ => {
            return Err(ApiError::bad_request(
                "give {\"ids\":[…]} or {\"all\":true}",
            ))
        }
    };
    let n = state.store.queues().requeue(q, ids).await?;
    Ok(response::json(200, &serde_json::json!({"requeued": n})))
}

/// `POST /v1/queues/{q}:pause` / `:resume`
pub async fn pause(state: &ServerState, q: &str, paused: bool) -> Result<Resp, ApiError> {
    state
        .store
        .queues()
        .configure(q, None, Some(paused))
        .await?;
    Ok(response::empty(204))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigReq {
    max_depth: Option<u64>,
    default_lease: Option<String>,
    max_attempts: Option<u32>,
    #[serde(default, deserialize_with = "crate::base::json_object::object_opt")]
    backoff: Option<BackoffReq>,
}

/// `PUT /v1/queues/{q}`: set config (fields left out keep their value).
pub async fn configure(
    state: &ServerState,
    q: &str,
    req: Request<ReqBody>,
) -> Result<Resp, ApiError> {
    validate_name(q)?;
    let r: ConfigReq = json_body(state, req).await?;
    let queues = state.store.queues();
    let current = queues.stats(q)?;
    let mut c = QueueConfig::default();
    if let Some(s) = &current {
        c.max_depth = s.max_depth;
        c.default_lease_ms = s.default_lease_ms;
        c.max_attempts = s.max_attempts;
        c.backoff = s.backoff;
    }
    if let Some(d) = r.max_depth {
        c.max_depth = d;
    }
    // Ranges are the domain's rule (QueueConfig::validate), checked in configure.
    if let Some(l) = r.default_lease.as_deref() {
        c.default_lease_ms = duration("default_lease", l)?;
    }
    if let Some(m) = r.max_attempts {
        c.max_attempts = m;
    }
    if let Some(b) = r.backoff {
        c.backoff = b.into_backoff(c.backoff)?;
    }
    queues.configure(q, Some(c), None).await?;
    let stats = queues.stats(q)?;
    Ok(response::json(
        if current.is_some() { 200 } else { 201 },
        &serde_json::to_value(stats).unwrap_or_default(),
    ))
}

/// `GET /v1/queues/{q}`
pub fn stats(state: &ServerState, q: &str) -> Result<Resp, ApiError> {
    let s = state
        .store
        .queues()
        .stats(q)?
        .ok_or_else(|| ApiError::not_found(format!("queue {q} does not exist")))?;
    Ok(response::json_of(200, &s))
}

/// `GET /v1/queues`
/// `GET /v1/queues?limit=&after=`: a page of queues by name (`next` is the cursor).
pub fn list_queues(state: &ServerState, req: &Request<ReqBody>) -> Result<Resp, ApiError> {
    let (limit, after) =
        super::input::name_page(&query(req), state.store.config().kv.list_limit_max)?;
    let (page, next) = state.store.queues().page_stats(after.as_deref(), limit)?;
    Ok(response::json(
        200,
        &serde_json::json!({"queues": page, "next": next}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleReq {
    cron: String,
    queue: String,
    payload: Box<RawValue>,
    priority: Option<u8>,
    max_attempts: Option<u32>,
}

/// A schedule as the API shows it.
#[derive(Serialize)]
struct ScheduleOut<'a> {
    name: &'a str,
    cron: &'a str,
    queue: &'a str,
    payload: Box<RawValue>,
    priority: u8,
    max_attempts: Option<u32>,
    created_at: u64,
    updated_at: u64,
    last_fire: Option<u64>,
    next_fire: Option<u64>,
    fired: u64,
    last_error: &'a Option<String>,
}

fn schedule_out(s: &crate::queue::model::Schedule) -> ScheduleOut<'_> {
    ScheduleOut {
        name: &s.name,
        cron: &s.cron,
        queue: &s.queue,
        payload: stored_json(&s.payload),
        priority: s.priority,
        max_attempts: s.max_attempts,
        created_at: s.created_ms,
        updated_at: s.updated_ms,
        last_fire: s.last_fire_ms,
        next_fire: s.next_fire_ms,
        fired: s.fired,
        last_error: &s.last_error,
    }
}

/// `PUT /v1/schedules/{name}`
pub async fn put_schedule(
    state: &ServerState,
    name: &str,
    req: Request<ReqBody>,
) -> Result<Resp, ApiError> {
    crate::queue::schedules::validate_schedule_name(name)?;
    let r: ScheduleReq = json_body(state, req).await?;
    if r.max_attempts == Some(0) {
        return Err(ApiError::bad_request("max_attempts must be at least 1"));
    }
    let spec = crate::queue::schedules::ScheduleSpec {
        cron: r.cron,
        queue: r.queue,
        payload: r.payload.get().as_bytes().to_vec(),
        priority: r.priority.unwrap_or(0),
        max_attempts: r.max_attempts,
    };
    let (created, s) = state.store.queues().put_schedule(name, spec).await?;
    Ok(response::json_of(
        if created { 201 } else { 200 },
        &schedule_out(&s),
    ))
}

/// `GET /v1/schedules/{name}`
pub fn get_schedule(state: &ServerState, name: &str) -> Result<Resp, ApiError> {
    let s = state
        .store
        .queues()
        .get_schedule(name)?
        .ok_or_else(|| ApiError::not_found(format!("schedule {name} does not exist")))?;
    Ok(response::json_of(200, &schedule_out(&s)))
}

/// `DELETE /v1/schedules/{name}`
pub async fn delete_schedule(state: &ServerState, name: &str) -> Result<Resp, ApiError> {
    if state.store.queues().delete_schedule(name).await? {
        Ok(response::empty(204))
    } else {
        Err(ApiError::not_found(format!(
            "schedule {name} does not exist"
        )))
    }
}

/// `GET /v1/schedules`
pub fn list_schedules(state: &ServerState) -> Result<Resp, ApiError> {
    #[derive(Serialize)]
    struct All<'a> {
        schedules: Vec<ScheduleOut<'a>>,
    }
    let all = state.store.queues().list_schedules()?;
    let schedules = all.iter().map(schedule_out).collect();
    Ok(response::json_of(200, &All { schedules }))
}
