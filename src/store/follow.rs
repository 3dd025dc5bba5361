//! A warm standby (`shardbox follow`) and its promotion.
//!
//! A standby is a box restored from the hub (`restore --from-nats`, keeping the primary's
//! generation) that goes on copying the primary's log stream (`ship_log`): each record's frame
//! is appended to its own log at the same LSN and applied to its shard as it is — the replay a
//! start does, live ([`crate::engine::Engine::replicate`]). Its answers carry the position they
//! reflect (`Shardbox-Position`), reads may wait for one (`min_position`), and every write is a
//! 409 `standby` naming the primary. Nothing that runs by itself (sweeps, timers, cron,
//! retention, sinks) runs on a standby: it would write.
//!
//! **Promotion** ([`Standby::promote`]) stops copying once the standby holds everything the
//! stream holds, then publishes a mark to the log stream with `Nats-Expected-Last-Sequence` of
//! the last message it applied: if the old primary published anything since, JetStream refuses
//! the mark and the standby copies that too and tries again. Once the mark is in, the stream is
//! the new primary's: it starts a new generation continuing the old one up to the mark
//! ([`crate::engine::feed::position::Lineage`]), records itself in the key-value bucket
//! `<stream>_<box>_ROLE` (key `primary`), takes writes and starts its sinks, which go on from
//! the mark. An old primary that comes back finds the streams continued by another generation
//! and that bucket naming it: it is fenced (every write a 409 `fenced`) — its own next publish
//! would fail the stream's expected-last-sequence check anyway.

use super::sink::{put_role, Role, PROMOTED_HEADER};
use super::snapshot::{self, Assembler, Step};
use super::Store;
use crate::base::config::NatsSinkConfig;
use crate::engine::feed::position::Lineage;
use crate::engine::feed::{Generation, Position};
use async_nats::jetstream;
use futures_util::StreamExt;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Copied records handed to the writers and not yet applied, at most.
const WINDOW: usize = 256;
/// Bytes of copied records handed to the writers and not yet applied, at most (one larger
/// record may pass it alone).
const WINDOW_BYTES: usize = 64 << 20;
/// Longest pause between two attempts after an error.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often a promotion tries to put its mark after the primary's last record.
const PROMOTE_TRIES: usize = 20;

/// What a standby is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Connecting = 0,
    Following = 1,
    Disconnected = 2,
    /// It cannot go on (its log and the stream's do not continue each other, or a record did
    /// not apply): rebuild it.
    Stopped = 3,
    Promoting = 4,
    /// It is the primary now.
    Promoted = 5,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Connecting,
        State::Following,
        State::Disconnected,
        State::Stopped,
        State::Promoting,
        State::Promoted,
    ];
    pub fn name(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Following => "following",
            State::Disconnected => "disconnected",
            State::Stopped => "stopped",
            State::Promoting => "promoting",
            State::Promoted => "promoted",
        }
    }
    fn from_u8(v: u8) -> State {
        State::ALL
            .into_iter()
            .find(|s| *s as u8 == v)
            .unwrap_or(State::Disconnected)
    }
}

/// Why a copying session ended.
enum End {
    Retry(String),
    /// The standby cannot go on: an operator rebuilds it.
    Stopped(String),
    /// Asked to stop (a promotion, or the server's shutdown).
    Stop,
}

/// What a promotion did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Promoted {
    /// The new generation, and the one it continues up to `through_lsn`.
    pub generation: String,
    pub previous: String,
    pub through_lsn: u64,
    /// The log stream's sequence of the promotion's mark.
    pub mark_sequence: u64,
    /// From the request to taking writes.
    pub took_ms: u64,
}

/// Why a promotion did not happen: the HTTP status, the error code, what to do.
pub type PromoteError = (u16, &'static str, String);

/// A standby and what it reports (status, metrics, `/readyz`).
pub struct Standby {
    pub cfg: NatsSinkConfig,
    state: AtomicU8,
    /// The log stream's sequence of the last message applied, and the stream's last sequence
    /// as last seen.
    applied_seq: AtomicU64,
    hub_seq: AtomicU64,
    /// When the standby last held everything the stream held (ms), for its lag in time.
    caught_up_ms: AtomicU64,
    /// The standby has held everything the stream held at least once (it is not ready before).
    ever_caught_up: std::sync::atomic::AtomicBool,
    pub applied_total: AtomicU64,
    pub errors_total: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Set to stop copying (a promotion); `exited` says the copying task is gone.
    stop: tokio::sync::watch::Sender<bool>,
    exited: tokio::sync::watch::Sender<bool>,
    /// One promotion at a time; what the last one did.
    promoting: tokio::sync::Mutex<Option<Promoted>>,
    /// `/readyz` says ready while the lag is at most this.
    pub ready_lag_ms: u64,
}

impl Standby {
    pub fn new(cfg: NatsSinkConfig, ready_lag_ms: u64) -> Standby {
        Standby {
            cfg,
            state: AtomicU8::new(State::Connecting as u8),
            applied_seq: AtomicU64::new(0),
            hub_seq: AtomicU64::new(0),
            caught_up_ms: AtomicU64::new(0),
            ever_caught_up: std::sync::atomic::AtomicBool::new(false),
            applied_total: AtomicU64::new(0),
            errors_total: AtomicU64::new(0),
            last_error: Mutex::new(None),
            stop: tokio::sync::watch::channel(false).0,
            exited: tokio::sync::watch::channel(false).0,
            promoting: tokio::sync::Mutex::new(None),
            ready_lag_ms,
        }
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Whether it has held everything the stream held at least once since it started.
    pub fn caught_up_once(&self) -> bool {
        self.ever_caught_up.load(Ordering::Relaxed)
    }

    fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    fn note_error(&self, e: &str) {
        self.errors_total.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }

    /// Messages of the log stream not applied yet (as of the last one seen), and for how long
    /// the standby has not held everything (0 when it does).
    pub fn lag(&self, now_ms: u64) -> (u64, u64) {
        let behind = self
            .hub_seq
            .load(Ordering::Relaxed)
            .saturating_sub(self.applied_seq.load(Ordering::Relaxed));
        let since = self.caught_up_ms.load(Ordering::Relaxed);
        let ms = if behind == 0 || since == 0 {
            0
        } else {
            now_ms.saturating_sub(since)
        };
        (behind, ms)
    }

    /// Whether `/readyz` says ready: copying, and at most `ready_lag_ms` behind (a promoted
    /// standby is a primary: ready).
    pub fn ready(&self, now_ms: u64) -> Result<(), String> {
        match self.state() {
            State::Promoted => Ok(()),
            State::Following if !self.ever_caught_up.load(Ordering::Relaxed) => Err(
                "the standby has not yet caught up with its primary's log stream since it started"
                    .into(),
            ),
            State::Following => {
                let (records, ms) = self.lag(now_ms);
                if ms <= self.ready_lag_ms {
                    Ok(())
                } else {
                    Err(format!(
                        "the standby is {records} messages and {ms} ms behind its primary (ready_lag_ms {})",
                        self.ready_lag_ms
                    ))
                }
            }
            s => Err(format!(
                "the standby is {}{}",
                s.name(),
                self.last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )),
        }
    }

    pub fn status_json(&self, store: &Store) -> serde_json::Value {
        let engine = store.engine();
        let (records, ms) = self.lag(engine.now_ms());
        let promoted = self
            .promoting
            .try_lock()
            .ok()
            .and_then(|p| p.clone());
        serde_json::json!({
            "primary": self.cfg.box_name,
            "stream": self.cfg.log_stream_name(),
            "state": self.state().name(),
            "applied": engine.position().to_string(),
            "applied_sequence": self.applied_seq.load(Ordering::Relaxed),
            "hub_sequence": self.hub_seq.load(Ordering::Relaxed),
            "lag_records": records,
            "lag_ms": ms,
            "applied_total": self.applied_total.load(Ordering::Relaxed),
            "errors_total": self.errors_total.load(Ordering::Relaxed),
            "last_error": *self.last_error.lock().unwrap_or_else(|p| p.into_inner()),
            "promoted": promoted,
        })
    }

    /// Copies the primary's log until stopped (a promotion, the server's stop) or until it
    /// cannot go on.
    pub async fn run(self: Arc<Self>, store: Store) {
        let mut pause = Duration::from_millis(200);
        loop {
            let end = self.session(&store).await;
            let message = match end {
                // A promotion that gave up takes its stop back: copying goes on.
                End::Stop if !*self.stop.borrow() && !store.engine().is_stopping() => {
                    continue
                }
                End::Stop => break,
                End::Stopped(m) => {
                    tracing::error!(error = %m, "standby: cannot go on copying the primary's log; rebuild it (`shardbox follow` on an empty directory)");
                    self.note_error(&m);
                    self.set_state(State::Stopped);
                    break;
                }
                End::Retry(m) => m,
            };
            self.note_error(&message);
            self.set_state(State::Disconnected);
            tracing::warn!(error = %message, "standby: copying stopped; trying again");
            let mut stop = self.stop.subscribe();
            let stopped = tokio::select! {
                _ = tokio::time::sleep(pause) => false,
                _ = async { stop.wait_for(|s| *s).await.is_ok() } => true,
                _ = store.engine().stopping() => true,
            };
            if stopped {
                break;
            }
            pause = (pause * 2).min(BACKOFF_MAX);
        }
        self.exited.send_replace(true);
    }

    /// One connection: from the first record this box lacks, every message of the log stream,
    /// in order, applied as it comes (up to [`WINDOW`] at once). Whatever ends it, the records
    /// handed to the writers are waited for first, so what `applied` says is always held.
    async fn session(&self, store: &Store) -> End {
        self.set_state(State::Connecting);
        let engine = store.engine();
        let client = match super::sink::connect(&self.cfg, None).await {
            Ok(c) => c,
            Err(e) => return End::Retry(e),
        };
        let js = jetstream::new(client);
        // A promoted box started again with `follow` would follow itself (its standbys share
        // its generation, not its directory's id).
        if let Ok(Some(r)) = super::sink::role(&js, &self.cfg).await {
            if r.node == store.node_id() && r.generation == engine.feed().generation().to_string()
            {
                return End::Stopped(format!(
                    "this data directory is box {}'s primary (generation {}, promoted at record {}): start it with `shardbox serve`, not `follow`",
                    self.cfg.box_name, r.generation, r.through_lsn
                ));
            }
        }
        let name = self.cfg.log_stream_name();
        let mut stream = match js.get_stream(&name).await {
            Ok(s) => s,
            Err(e) => return End::Retry(format!("stream {name}: {e}")),
        };
        let info = match stream.info().await {
            Ok(i) => i.clone(),
            Err(e) => return End::Retry(format!("stream {name}: {e}")),
        };
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        self.hub_seq.store(last, Ordering::Relaxed);
        let next = engine.wal().appended_lsn() + 1;
        // From the record before the first one needed: a promotion's mark right after it is
        // seen (it carries that record's LSN).
        let start = if last == 0 || last < first {
            last + 1
        } else {
            match snapshot::seq_at_or_after(&stream, &name, first, last, next.saturating_sub(1)).await {
                Ok(s) => s,
                Err(e) => return End::Retry(e),
            }
        };
        if start == first && first > 1 && last >= first {
            // The stream's first message may already be past what this box holds.
            match stream.get_raw_message(first).await {
                Ok(m) => {
                    let lsn = m
                        .headers
                        .get("Shardbox-Position")
                        .and_then(|p| p.as_str().parse::<Position>().ok())
                        .map_or(0, |p| p.lsn);
                    if lsn > next {
                        return End::Stopped(format!(
                            "stream {name} begins at record {lsn}; this standby needs {next} on: the hub no longer holds them (max_age)"
                        ));
                    }
                }
                Err(e) => return End::Retry(format!("stream {name} message {first}: {e}")),
            }
        }
        let consumer = match stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start.max(1),
                },
                ..Default::default()
            })
            .await
        {
            Ok(c) => c,
            Err(e) => return End::Retry(format!("a consumer of stream {name}: {e}")),
        };
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => return End::Retry(format!("reading stream {name}: {e}")),
        };
        self.set_state(State::Following);
        if self.applied_seq.load(Ordering::Relaxed) >= last || start > last {
            // Nothing to copy: it holds everything the stream holds.
            self.seen(store, last.max(start - 1));
        }
        // The lag clock runs from when the standby last held everything.
        if self.caught_up_ms.load(Ordering::Relaxed) == 0 {
            self.caught_up_ms.store(engine.now_ms(), Ordering::Relaxed);
        }
        let mut asm =
            Assembler::new(engine.feed().generation(), next).with_lineage(engine.feed().lineage());
        let mut pending_bytes = 0usize;
        // Handed to a writer, not yet applied: (lsn, stream sequence, outcome, frame).
        type Outcome = tokio::sync::oneshot::Receiver<Result<(), crate::engine::EngineError>>;
        let mut pending: VecDeque<(u64, u64, Outcome, Vec<u8>)> = VecDeque::new();
        let mut stop = self.stop.subscribe();
        let stopping = engine.stopping();
        tokio::pin!(stopping);
        let end = loop {
            tokio::select! {
                biased;
                _ = async { stop.wait_for(|s| *s).await.is_ok() } => break End::Stop,
                _ = &mut stopping => break End::Stop,
                done = async { (&mut pending.front_mut().expect("pending is not empty").2).await },
                    if !pending.is_empty() => {
                    let Some((lsn, seq, _, frame)) = pending.pop_front() else { continue };
                    pending_bytes -= frame.len();
                    match done {
                        Ok(Ok(())) => {
                            after_apply(store, &frame);
                            self.applied(store, lsn, seq)
                        }
                        Ok(Err(e)) => break End::Stopped(format!("record {lsn} did not apply: {e}")),
                        Err(_) => break End::Stop,
                    }
                }
                m = messages.next(), if pending.len() < WINDOW && (pending.is_empty() || pending_bytes < WINDOW_BYTES) => {
                    let m = match m {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => break End::Retry(format!("reading stream {name}: {e}")),
                        None => break End::Retry(format!("stream {name} ended")),
                    };
                    let (seq, behind) = match m.info() {
                        Ok(i) => (i.stream_sequence, i.pending),
                        Err(e) => break End::Retry(format!("a message of stream {name}: {e}")),
                    };
                    if self.applied_seq.load(Ordering::Relaxed) >= self.hub_seq.load(Ordering::Relaxed) {
                        // Caught up until this message: the lag clock starts now.
                        self.caught_up_ms.store(engine.now_ms(), Ordering::Relaxed);
                    }
                    self.hub_seq.fetch_max(seq + behind, Ordering::Relaxed);
                    let headers = m.headers.clone().unwrap_or_default();
                    match asm.take(&headers, &m.payload, seq) {
                        Err(e) => break End::Stopped(e),
                        Ok(Step::Skip) => {
                            if pending.is_empty() {
                                self.seen(store, seq);
                            }
                        }
                        Ok(Step::Frame(lsn, frame)) => match engine.replicate(&frame).await {
                            Ok(rx) => {
                                pending_bytes += frame.len();
                                pending.push_back((lsn, seq, rx, frame))
                            }
                            Err(e) => break End::Stopped(format!("record {lsn}: {e}")),
                        },
                        Ok(Step::Promoted { generation, through }) => {
                            // Another standby took over where this one is: it follows the new
                            // primary, in its generation.
                            while let Some((lsn, seq, rx, frame)) = pending.pop_front() {
                                match rx.await {
                                    Ok(Ok(())) => {
                                        after_apply(store, &frame);
                                        self.applied(store, lsn, seq)
                                    }
                                    _ => return End::Stopped(format!("record {lsn} did not apply")),
                                }
                            }
                            let previous = engine.feed().generation();
                            if let Err(e) = engine.switch_generation(generation, Lineage { previous, through_lsn: through }) {
                                break End::Stopped(e.to_string());
                            }
                            tracing::info!(%generation, %previous, through, "standby: its primary's box was taken over by a promoted standby; following the new primary");
                            self.applied(store, through, seq);
                        }
                    }
                }
            }
        };
        // What was handed to the writers is held before anything else happens.
        while let Some((lsn, seq, rx, frame)) = pending.pop_front() {
            match rx.await {
                Ok(Ok(())) => {
                    after_apply(store, &frame);
                    self.applied(store, lsn, seq)
                }
                Ok(Err(e)) => return End::Stopped(format!("record {lsn} did not apply: {e}")),
                Err(_) => return End::Stop,
            }
        }
        end
    }

    /// Record `lsn` (stream sequence `seq`) and everything before it are applied.
    fn applied(&self, store: &Store, lsn: u64, seq: u64) {
        store.engine().set_standby_applied(Some(lsn));
        self.applied_total.fetch_add(1, Ordering::Relaxed);
        self.seen(store, seq);
    }

    /// Every message of the stream up to `seq` is held (applied, or nothing to apply).
    fn seen(&self, store: &Store, seq: u64) {
        self.applied_seq.fetch_max(seq, Ordering::Relaxed);
        if self.applied_seq.load(Ordering::Relaxed) >= self.hub_seq.load(Ordering::Relaxed) {
            self.caught_up_ms
                .store(store.engine().now_ms(), Ordering::Relaxed);
            self.ever_caught_up.store(true, Ordering::Relaxed);
        }
    }

    /// Makes this standby the primary (`store::follow`'s promotion).
    pub async fn promote(self: &Arc<Self>, store: &Store) -> Result<Promoted, PromoteError> {
        let started = std::time::Instant::now();
        let Ok(mut done) = self.promoting.try_lock() else {
            return Err((409, "promotion_running", "a promotion is already running".into()));
        };
        if let Some(p) = done.as_ref() {
            return Err((
                409,
                "already_primary",
                format!("this box was promoted already (generation {})", p.generation),
            ));
        }
        if self.state() == State::Stopped {
            return Err((
                409,
                "standby_stopped",
                "this standby stopped copying (see /v1/status): it may lack records its primary acknowledged; rebuild it".into(),
            ));
        }
        // Stop copying; what was handed to the writers is applied first.
        self.stop.send_replace(true);
        let mut exited = self.exited.subscribe();
        let gone = tokio::time::timeout(Duration::from_secs(60), async {
            exited.wait_for(|e| *e).await.is_ok()
        })
        .await
        .unwrap_or(false);
        if !gone {
            self.stop.send_replace(false);
            return Err((
                503,
                "hub_unavailable",
                "the standby did not stop copying within 60 s (its writers are busy or stuck); try again".into(),
            ));
        }
        if self.state() == State::Stopped {
            return Err((
                409,
                "standby_stopped",
                "this standby stopped copying (see /v1/status): it may lack records its primary acknowledged; rebuild it".into(),
            ));
        }
        self.set_state(State::Promoting);
        let result = self.take_over(store).await;
        match result {
            Ok(mut p) => {
                p.took_ms = started.elapsed().as_millis() as u64;
                self.set_state(State::Promoted);
                tracing::info!(generation = %p.generation, previous = %p.previous, through = p.through_lsn, took_ms = p.took_ms, "standby promoted: this box is the primary");
                *done = Some(p.clone());
                store.start_primary_tasks();
                Ok(p)
            }
            Err(e) if self.state() == State::Promoting => {
                // The mark did not go in: back to copying (the old task is gone).
                self.note_error(&e.2);
                self.stop.send_replace(false);
                self.exited.send_replace(false);
                self.set_state(State::Connecting);
                tokio::spawn(self.clone().run(store.clone()));
                Err(e)
            }
            Err(e) => {
                self.note_error(&e.2);
                Err(e)
            }
        }
    }

    /// Applies what the stream holds after this box, puts the promotion's mark after it (again
    /// while the old primary adds more), then switches this box to its new generation.
    async fn take_over(&self, store: &Store) -> Result<Promoted, PromoteError> {
        let unavailable = |e: String| (503, "hub_unavailable", e);
        let engine = store.engine();
        let client = super::sink::connect(&self.cfg, None)
            .await
            .map_err(unavailable)?;
        let js = jetstream::new(client);
        let name = self.cfg.log_stream_name();
        let mut stream = js
            .get_stream(&name)
            .await
            .map_err(|e| unavailable(format!("stream {name}: {e}")))?;
        let previous = engine.feed().generation();
        // One new generation and one mark id for every try: a mark stored whose ack was lost
        // is found again, never put twice.
        let generation = Generation::fresh();
        let mark_id = format!("{}:promote:{generation}", self.cfg.box_name);
        for _ in 0..PROMOTE_TRIES {
            let info = stream
                .info()
                .await
                .map_err(|e| unavailable(format!("stream {name}: {e}")))?
                .clone();
            let (first, last) = (info.state.first_sequence, info.state.last_sequence);
            let next = engine.wal().appended_lsn() + 1;
            if last >= first && last > 0 {
                let from = snapshot::seq_at_or_after(&stream, &name, first, last, next.saturating_sub(1))
                    .await
                    .map_err(unavailable)?;
                let mut asm = Assembler::new(previous, next).with_lineage(engine.feed().lineage());
                for seq in from..=last {
                    let m = stream
                        .get_raw_message(seq)
                        .await
                        .map_err(|e| unavailable(format!("stream {name} message {seq}: {e}")))?;
                    match asm.take(&m.headers, &m.payload, seq) {
                        Err(e) => return Err((409, "standby_stopped", e)),
                        Ok(Step::Skip) => {}
                        Ok(Step::Promoted { generation, .. }) => {
                            return Err((
                                409,
                                "already_promoted",
                                format!("another standby was promoted (generation {generation}): this one follows an old primary; rebuild it"),
                            ))
                        }
                        Ok(Step::Frame(lsn, frame)) => {
                            let rx = engine
                                .replicate(&frame)
                                .await
                                .map_err(|e| (500, "standby_stopped", format!("record {lsn}: {e}")))?;
                            match rx.await {
                                Ok(Ok(())) => {
                                    after_apply(store, &frame);
                                    self.applied(store, lsn, seq)
                                }
                                _ => {
                                    return Err((500, "standby_stopped", format!("record {lsn} did not apply")))
                                }
                            }
                        }
                    }
                }
            }
            // Everything the stream held is here, and durable: the mark goes right after it,
            // or not at all.
            let through = engine.wal().appended_lsn();
            let wal = store.engine().clone();
            tokio::task::spawn_blocking(move || wal.wal().wait(through))
                .await
                .map_err(|e| (500, "internal", e.to_string()))?
                .map_err(|e| (500, "standby_stopped", e.to_string()))?;
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", mark_id.as_str());
            headers.insert("Nats-Expected-Last-Sequence", last.to_string().as_str());
            headers.insert(
                "Shardbox-Position",
                Position::after_record(generation, through).to_string().as_str(),
            );
            headers.insert(PROMOTED_HEADER, format!("{previous}:{through}").as_str());
            let sent = match js
                .publish_with_headers(self.cfg.log_subject(), headers, bytes::Bytes::new())
                .await
            {
                Ok(ack) => ack.await.map_err(|e| (Some(e.kind()), e.to_string())),
                Err(e) => Err((None, e.to_string())),
            };
            let mark_sequence = match sent {
                Ok(ack) => ack.sequence,
                Err((Some(jetstream::context::PublishErrorKind::WrongLastSequence), _)) => {
                    // The old primary wrote more meanwhile: copy it too, and try again.
                    continue;
                }
                // No answer: the mark may be in all the same.
                Err((_, e)) => match last_is(&mut stream, &mark_id).await {
                    Some(seq) => seq,
                    None => return Err(unavailable(format!("the promotion's mark: {e}"))),
                },
            };
            // The mark is in: this box is the box's primary from here, whatever fails next.
            self.set_state(State::Promoted);
            let lineage = Lineage {
                previous,
                through_lsn: through,
            };
            if let Err(e) = engine.switch_generation(generation, lineage) {
                self.set_state(State::Stopped);
                return Err((
                    500,
                    "internal",
                    format!("the promotion's mark is in stream {name}, but this box could not start its generation ({e}): fix the data directory and start it with `shardbox serve`"),
                ));
            }
            // Every generation a promotion has superseded, this one's predecessor last: what
            // an old primary finds itself in to know it is fenced. Read and written again on
            // each try: a role that could not be read is never written over with a shorter list.
            let mut recorded = Err(String::new());
            for _ in 0..3 {
                recorded = match super::sink::role(&js, &self.cfg).await {
                    Ok(earlier) => {
                        let mut superseded = earlier.map(|r| r.superseded).unwrap_or_default();
                        superseded.retain(|g| *g != previous.to_string());
                        superseded.push(previous.to_string());
                        let keep = superseded.len().saturating_sub(64);
                        superseded.drain(..keep);
                        let role = Role {
                            generation: generation.to_string(),
                            previous: previous.to_string(),
                            through_lsn: through,
                            at_ms: engine.now_ms(),
                            node: store.node_id().to_string(),
                            superseded,
                        };
                        put_role(&js, &self.cfg, &role).await
                    }
                    Err(e) => Err(e),
                };
                if recorded.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            if let Err(e) = recorded {
                // The mark fences an old primary by itself (its sink reads it).
                tracing::warn!(error = %e, "promotion: the role bucket was not written; the stream's mark fences the old primary");
            }
            // Writes open in `Store::start_primary_tasks` (at once, or once it holds the lease
            // with `failover = "auto"`).
            engine.set_standby_applied(None);
            return Ok(Promoted {
                generation: generation.to_string(),
                previous: previous.to_string(),
                through_lsn: through,
                mark_sequence,
                took_ms: 0,
            });
        }
        Err((
            409,
            "primary_still_writing",
            format!("the primary kept writing to {name} through {PROMOTE_TRIES} attempts to take over: stop it first"),
        ))
    }
}

/// What a domain keeps in memory beside its tables follows a record copied from the primary,
/// once it is committed and before the standby says it holds it: the KV read cache lets go
/// of the keys it wrote (after the commit, so a read that raced it cannot put the old value
/// back), event followers wake, cache purge generations move.
fn after_apply(store: &Store, frame_bytes: &[u8]) {
    use crate::engine::redo::Op;
    use crate::engine::wal::frame;
    let Some(payload) = frame::parse_header(frame_bytes).and_then(|h| {
        frame_bytes
            .get(frame::RECORD_HEADER_BYTES..)
            .and_then(|p| p.get(..h.len))
    }) else {
        return;
    };
    let Ok(ops) = crate::engine::redo::ops(payload) else {
        return;
    };
    for op in ops {
        match op {
            Op::Put { name: "kv", key, .. } | Op::Del { name: "kv", key, .. } => {
                store.kv().replayed(Some(key))
            }
            Op::Drop { name: "kv" } => store.kv().replayed(None),
            Op::Put {
                name: "ev_streams",
                key,
                ..
            } => store.events().replayed(key),
            Op::Put {
                name: "cache_generations",
                key,
                value,
                ..
            } => {
                if let (Some(cache), Ok(v)) = (store.cache_if_open(), <[u8; 8]>::try_from(value)) {
                    cache.replayed_generation(key, u64::from_le_bytes(v));
                }
            }
            _ => {}
        }
    }
}

/// The sequence of the stream's last message when its id is `id`.
async fn last_is(stream: &mut jetstream::stream::Stream, id: &str) -> Option<u64> {
    let last = stream.info().await.ok()?.state.last_sequence;
    let m = stream.get_raw_message(last).await.ok()?;
    (m.headers.get("Nats-Msg-Id").map(|v| v.as_str()) == Some(id)).then_some(last)
}

