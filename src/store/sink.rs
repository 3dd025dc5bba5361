//! The NATS JetStream sink: the change feed shipped off the box, one JetStream message per
//! change, in order, once ([`crate::engine::feed`]).
//!
//! - The box writes its own stream, `<stream>_<box>` (created if missing: file storage, the
//!   configured replicas, deletes and purges denied), on subjects
//!   `<subject_prefix>.<box>.<domain>.<name>` with the name escaped ([`escape`]). Its own
//!   stream because JetStream's gap check is per stream: only this sink writes it, so every
//!   message's stream sequence is known before it is sent, and each carries
//!   `Nats-Expected-Last-Sequence` of the one before it — JetStream itself refuses a gap or a
//!   reorder, whatever its dedupe window remembers after a restart. A message sent twice is
//!   dropped by its `Nats-Msg-Id` (`<box>:<generation>:<lsn>:<index>`).
//! - Where to go on from is read from the stream (its last message's `Shardbox-Position`) at
//!   every start and after every error, never from memory: what JetStream acknowledged is what
//!   was shipped. A named feed cursor ([`CURSOR`]) keeps the log the sink has not shipped yet,
//!   up to `feed_retain_bytes_max`; past it the sink is `resnapshot_required`.
//! - Changes go as JetStream atomic batches (ADR-50, nats-server 2.12+): up to 1,000 messages
//!   stored all or none, one ack each, the batch's expected last sequence checked as it commits;
//!   the hub writes and replicates a batch at once, so a change costs it a fraction of a lone
//!   message. A hub without them gets one message at a time.
//! - Publishes are pipelined: up to `window` acks outstanding (32 batches). A hub that is down or slow makes
//!   the box lag (the log keeps the backlog); it never blocks or slows the box's writes.

use crate::base::config::NatsSinkConfig;
use crate::engine::feed::{Entry, FeedError, Filter, Position};
use crate::engine::Engine;
use async_nats::jetstream;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The feed cursor that holds what the sink has not shipped.
pub const CURSOR: &str = "sink-nats";
/// The feed cursor that holds what the log stream has not shipped.
pub const LOG_CURSOR: &str = "sink-nats-log";

/// What a sink ships.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The change feed: one message per change, on `<prefix>.<box>.<domain>.<name>`, stream
    /// `<stream>_<box>`.
    Changes,
    /// The log itself (`ship_log = true`): one message per record, its frame as the log holds
    /// it, on `<prefix>_log.<box>`, stream `<stream>_<box>_LOG` — what `shardbox restore
    /// --from-nats` replays after a snapshot, every id kept, no decoding.
    Log,
}

impl Source {
    /// The feed cursor that holds the log for it.
    pub fn cursor(self) -> &'static str {
        match self {
            Source::Changes => CURSOR,
            Source::Log => LOG_CURSOR,
        }
    }

    pub fn stream_name(self, c: &NatsSinkConfig) -> String {
        match self {
            Source::Changes => c.stream_name(),
            Source::Log => c.log_stream_name(),
        }
    }

    fn subjects(self, c: &NatsSinkConfig) -> Vec<String> {
        match self {
            Source::Changes => vec![format!("{}.{}.>", c.subject_prefix, c.box_name)],
            Source::Log => vec![c.log_subject()],
        }
    }
}
/// Changes read from the feed at once.
const PAGE: usize = 1000;
/// Messages in one atomic batch at most (JetStream's limit is 1,000).
const BATCH_MAX: usize = 1000;
/// A log record's frame goes in parts of this many bytes (the hub's `max_payload` must take
/// a part and its headers: NATS's default is 1 MiB).
const PART_BYTES: usize = 256 << 10;
/// Bytes of message bodies in one batch at most (the stream's leader keeps a batch in memory
/// until its commit).
const BATCH_BYTES: usize = 4 << 20;
/// Batches awaiting their ack at most (JetStream allows 50 per stream).
const BATCHES_IN_FLIGHT: usize = 32;
/// Shortest time between two batches of a caught-up sink (the changes made meanwhile gather).
const LINGER: Duration = Duration::from_millis(10);
/// How often the cursor is saved as acks come in (the stream is the truth; the cursor only
/// keeps the log).
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// Longest pause between two attempts after an error.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What the sink is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Connecting = 0,
    CatchingUp = 1,
    Streaming = 2,
    Disconnected = 3,
    ResnapshotRequired = 4,
    /// A standby took this box's place (`store::follow`): the box takes no writes.
    Fenced = 5,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Connecting,
        State::CatchingUp,
        State::Streaming,
        State::Disconnected,
        State::ResnapshotRequired,
        State::Fenced,
    ];
    pub fn name(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::CatchingUp => "catching_up",
            State::Streaming => "streaming",
            State::Disconnected => "disconnected",
            State::ResnapshotRequired => "resnapshot_required",
            State::Fenced => "fenced",
        }
    }
    fn from_u8(v: u8) -> State {
        State::ALL
            .into_iter()
            .find(|s| *s as u8 == v)
            .unwrap_or(State::Disconnected)
    }
}

/// The sink and what it reports (status page, metrics).
#[derive(Debug)]
pub struct Sink {
    pub cfg: NatsSinkConfig,
    pub source: Source,
    state: AtomicU8,
    pub published_total: AtomicU64,
    pub acked_total: AtomicU64,
    pub errors_total: AtomicU64,
    /// The last change JetStream acknowledged, and when its batch was applied.
    acked: Mutex<Option<(Position, Option<u64>)>>,
    /// The highest LSN whose every change (or, for the log, the record) the hub holds:
    /// `ack = "hub"` replies wait on it.
    acked_lsn: tokio::sync::watch::Sender<u64>,
    /// When the oldest change published and not yet acknowledged was applied (ms), 0: none.
    oldest_unacked_ms: AtomicU64,
    /// When the first change not yet shipped was applied (ms), 0: unknown — read by the sink's
    /// task when a session ends, so the status page's lag in seconds costs it no log read.
    backlog_at_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// The NATS connection is up (the client reconnects by itself; while it is down the sink
    /// says `disconnected` even when nothing failed yet).
    connected: Arc<std::sync::atomic::AtomicBool>,
    /// The hub takes atomic batches (nats-server 2.12+): many changes per ack.
    atomic: std::sync::atomic::AtomicBool,
    /// The changes sink beside a log sink ships no change of a record the log stream does not
    /// hold yet ([`Sink::held_behind`]).
    ceiling: Option<tokio::sync::watch::Receiver<u64>>,
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    /// Try again after a pause (the hub is down, a publish failed, …).
    Retry(String),
    /// The box's history and the stream's do not continue each other, or the log let go of
    /// what the sink had not shipped: an operator must act.
    Resnapshot(String),
    /// The stream goes on in the generation of a standby that was promoted in this box's
    /// place: this box must not write.
    Fenced(String),
    /// The store is stopping.
    Stopping,
}

fn retry<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> End + '_ {
    move |e| End::Retry(format!("{what}: {e}"))
}

impl Sink {
    pub fn new(cfg: NatsSinkConfig, source: Source) -> Sink {
        Sink {
            cfg,
            source,
            state: AtomicU8::new(State::Connecting as u8),
            published_total: AtomicU64::new(0),
            acked_total: AtomicU64::new(0),
            errors_total: AtomicU64::new(0),
            acked: Mutex::new(None),
            acked_lsn: tokio::sync::watch::Sender::new(0),
            oldest_unacked_ms: AtomicU64::new(0),
            backlog_at_ms: AtomicU64::new(0),
            last_error: Mutex::new(None),
            connected: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            atomic: std::sync::atomic::AtomicBool::new(false),
            ceiling: None,
        }
    }

    /// Ships no change of a record before `log` (the log sink) has the hub hold that record:
    /// the changes stream never gets ahead of the log stream, so a box rebuilt from the hub or
    /// a promoted standby — which hold exactly what the log stream holds — can always continue
    /// it. The cost is the log stream's ack, a round trip, on the changes' lag.
    pub fn held_behind(mut self, log: &Sink) -> Sink {
        self.ceiling = Some(log.acked_lsn.subscribe());
        self
    }

    pub fn state(&self) -> State {
        match State::from_u8(self.state.load(Ordering::Relaxed)) {
            State::Streaming | State::CatchingUp if !self.connected.load(Ordering::Relaxed) => {
                State::Disconnected
            }
            s => s,
        }
    }

    fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    /// Notes that the hub holds everything up to `p`.
    fn note_acked(&self, p: Position) {
        let covered = if p.index == Position::WHOLE_RECORD {
            p.lsn
        } else {
            p.lsn.saturating_sub(1)
        };
        self.acked_lsn.send_if_modified(|at| {
            let moved = covered > *at;
            *at = (*at).max(covered);
            moved
        });
    }

    /// Waits (at most `timeout`) until the hub holds everything up to record `lsn`; false
    /// when it did not in time.
    pub async fn wait_acked(&self, lsn: u64, timeout: Duration) -> bool {
        let mut rx = self.acked_lsn.subscribe();
        let acked = tokio::time::timeout(timeout, rx.wait_for(|at| *at >= lsn))
            .await
            .is_ok_and(|r| r.is_ok());
        acked
    }

    /// The last acknowledged position.
    pub fn acked(&self) -> Option<Position> {
        self.acked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|(p, _)| p)
    }

    /// Records behind the feed's end, and the age in ms of the oldest change not yet
    /// acknowledged (0 when caught up).
    pub fn lag(&self, engine: &Engine) -> (u64, u64) {
        let end = engine.feed().end();
        let acked = *self.acked.lock().unwrap_or_else(|p| p.into_inner());
        let records = match acked {
            // A position inside a record still has that record to ship.
            Some((p, _)) => end.lsn.saturating_sub(p.first_needed().saturating_sub(1)),
            // Before the first session: everything the sink's cursor holds.
            None => engine
                .feed()
                .cursors
                .position(self.source.cursor(), None)
                .map_or(0, |p| end.lsn.saturating_sub(p.lsn)),
        };
        let now = engine.now_ms();
        let oldest = self.oldest_unacked_ms.load(Ordering::Relaxed);
        let backlog = self.backlog_at_ms.load(Ordering::Relaxed);
        let ms = if oldest > 0 {
            now.saturating_sub(oldest)
        } else if records > 0 {
            // Behind with nothing in flight: the first change not shipped (read when a session
            // ended) says how old the backlog is; between pages, the last one shipped does (the
            // next is no older).
            let since = match backlog {
                0 => acked.and_then(|(_, at)| at).unwrap_or(0),
                b => b,
            };
            if since > 0 {
                now.saturating_sub(since)
            } else {
                0
            }
        } else {
            0
        };
        (records, ms)
    }

    /// Notes when the first change not yet shipped was applied (after a session ended, so a
    /// disconnected sink still tells its lag in seconds); a log read, off the async threads.
    async fn note_backlog(&self, engine: &Arc<Engine>) {
        let from = self.acked().or_else(|| {
            let feed = engine.feed();
            feed.cursors.position(self.source.cursor(), feed.oldest()).ok()
        });
        let Some(from) = from else { return };
        let e = engine.clone();
        let at = tokio::task::spawn_blocking(move || {
            e.feed()
                .read(from, 1, &Filter::default())
                .ok()
                .and_then(|page| page.entries.first().and_then(|e| e.at_ms))
        })
        .await
        .ok()
        .flatten();
        self.backlog_at_ms.store(at.unwrap_or(0), Ordering::Relaxed);
    }

    /// What /v1/status shows.
    pub fn status_json(&self, engine: &Engine) -> serde_json::Value {
        let (lag_records, lag_ms) = self.lag(engine);
        serde_json::json!({
            "state": self.state().name(),
            "box": self.cfg.box_name,
            "stream": self.source.stream_name(&self.cfg),
            "acked_position": self.acked().map(|p| p.to_string()),
            "lag_records": lag_records,
            "lag_ms": lag_ms,
            "published_total": self.published_total.load(Ordering::Relaxed),
            "acked_total": self.acked_total.load(Ordering::Relaxed),
            "errors_total": self.errors_total.load(Ordering::Relaxed),
            "atomic_batches": self.atomic.load(Ordering::Relaxed),
            "last_error": self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        })
    }

    /// Ships the feed until the store stops; errors are reported and retried with a backoff.
    pub async fn run(self: Arc<Self>, engine: Arc<Engine>) {
        let mut pause = Duration::from_millis(200);
        loop {
            let started = Instant::now();
            let end = tokio::select! {
                end = self.session(&engine) => end,
                _ = engine.stopping() => End::Stopping,
            };
            let (state, message) = match end {
                End::Stopping => return,
                End::Retry(m) => (State::Disconnected, m),
                End::Resnapshot(m) => (State::ResnapshotRequired, m),
                End::Fenced(m) => {
                    tracing::error!(error = %m, "this box was taken over by a promoted standby: it takes no more writes");
                    engine.set_read_only(FENCED, m.clone());
                    (State::Fenced, m)
                }
            };
            self.oldest_unacked_ms.store(0, Ordering::Relaxed);
            self.note_backlog(&engine).await;
            self.errors_total.fetch_add(1, Ordering::Relaxed);
            self.set_state(state);
            tracing::warn!(error = %message, state = state.name(), "NATS sink: session ended; trying again");
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
            if started.elapsed() > Duration::from_secs(30) {
                pause = Duration::from_millis(200);
            }
            // Waiting for an operator: look again now and then, not every 2 s.
            let wait = if matches!(state, State::ResnapshotRequired | State::Fenced) {
                Duration::from_secs(30)
            } else {
                pause
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = engine.stopping() => return,
            }
            pause = (pause * 2).min(BACKOFF_MAX);
        }
    }

    async fn connect(&self) -> Result<async_nats::Client, End> {
        let client = connect(&self.cfg, Some(self.connected.clone()))
            .await
            .map_err(End::Retry)?;
        self.connected.store(true, Ordering::Relaxed);
        Ok(client)
    }

    /// One connection: find where the stream ends, then publish from there until an error.
    async fn session(&self, engine: &Arc<Engine>) -> End {
        self.set_state(State::Connecting);
        let client = match self.connect().await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let max_payload = client.server_info().max_payload;
        if self.source == Source::Log && max_payload < PART_BYTES + 4096 {
            return End::Retry(format!(
                "the hub's max_payload ({max_payload} bytes) is below {} bytes: the log sink sends records in parts of {PART_BYTES} bytes",
                PART_BYTES + 4096
            ));
        }
        // async-nats bounds acks in flight itself (5,000 by default): above our window.
        let js = jetstream::ContextBuilder::new()
            .max_ack_inflight(self.cfg.window + 2)
            .build(client.clone());
        let c = &self.cfg;
        let mut stream = match js
            .get_or_create_stream(jetstream::stream::Config {
                name: self.source.stream_name(c),
                subjects: self.source.subjects(c),
                storage: jetstream::stream::StorageType::File,
                num_replicas: c.replicas,
                deny_delete: true,
                deny_purge: true,
                duplicate_window: Duration::from_secs(120),
                allow_direct: true,
                allow_atomic_publish: true,
                ..Default::default()
            })
            .await
        {
            Ok(s) => s,
            Err(e) => return retry("creating or reading the stream")(e),
        };
        let atomic = match self.atomic(&js, &mut stream, &client.server_info().version).await {
            Ok(a) => a,
            Err(e) => return e,
        };
        self.atomic.store(atomic, Ordering::Relaxed);
        let (start, last_seq) = match self.resume_point(engine, &js, &stream).await {
            Ok(p) => p,
            Err(e) => return e,
        };
        *self.acked.lock().unwrap_or_else(|p| p.into_inner()) = Some((start, None));
        // The stream holds everything up to where it ends.
        if last_seq > 0 {
            self.note_acked(start);
        }
        let in_flight = if atomic {
            self.cfg.window.min(BATCHES_IN_FLIGHT)
        } else {
            self.cfg.window
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Pending>(in_flight);
        let publisher = self.publish_from(
            engine,
            &js,
            start,
            last_seq,
            Hub {
                max_payload,
                atomic,
                window: Arc::new(tokio::sync::Semaphore::new(in_flight)),
            },
            tx,
        );
        let acker = self.settle(engine, rx);
        let end = match tokio::try_join!(publisher, acker) {
            Ok(_) => End::Stopping,
            Err(e) => e,
        };
        // Publishes still queued in this client must not go out later, after a new session
        // has moved on (their sequences would be refused anyway): close it.
        let _ = tokio::time::timeout(Duration::from_secs(2), client.drain()).await;
        end
    }

    /// Whether the stream takes atomic batches (nats-server 2.12 and later): a stream made
    /// before the sink used them is updated to; a hub that cannot gets one message at a time.
    async fn atomic(
        &self,
        js: &jetstream::Context,
        stream: &mut jetstream::stream::Stream,
        server_version: &str,
    ) -> Result<bool, End> {
        // 2.12.0 refuses `Nats-Msg-Id` inside a batch; 2.12.1 takes it (ADR-50).
        let v: Vec<u64> = server_version
            .split(|c: char| !c.is_ascii_digit())
            .take(3)
            .map(|n| n.parse().unwrap_or(0))
            .collect();
        if v.as_slice() < [2, 12, 1].as_slice() {
            tracing::info!(version = server_version, "NATS sink: the hub takes no atomic batches with message ids (before 2.12.1); publishing one change at a time");
            return Ok(false);
        }
        let info = stream
            .info()
            .await
            .map_err(retry("reading the stream's config"))?;
        if info.config.allow_atomic_publish {
            return Ok(true);
        }
        let mut config = info.config.clone();
        config.allow_atomic_publish = true;
        match js.update_stream(config).await {
            Ok(updated) => Ok(updated.config.allow_atomic_publish),
            Err(e) => {
                tracing::info!(error = %e, "NATS sink: the hub takes no atomic batches; publishing one change at a time");
                Ok(false)
            }
        }
    }

    /// Where the stream ends: its last message's position and id; for an empty stream, the
    /// sink's cursor (made at the feed's end the first time). Holds the log from there.
    async fn resume_point(
        &self,
        engine: &Arc<Engine>,
        js: &jetstream::Context,
        stream: &jetstream::stream::Stream,
    ) -> Result<(Position, u64), End> {
        let feed = engine.feed();
        // A standby promoted in this box's place: checked before anything is published, on
        // both streams (the changes may not show the promotion yet when the log does).
        let ours = feed.generation();
        // A role bucket that cannot be read (a token without the right to, a timeout) does not
        // stop the sink: the stream's expected-sequence check still refuses a superseded box.
        let role = role(js, &self.cfg).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "NATS sink: cannot read the role bucket (does the token allow $JS.API.STREAM.INFO.KV_*?); going on without its fencing check");
            None
        });
        if let Some(r) = role.as_ref().filter(|r| r.supersedes(ours)) {
            return Err(End::Fenced(format!(
                "a standby was promoted in this box's place at record {} (generation {} goes on from this box's {ours}): this box is no longer the primary of box {} — rebuild it as a standby (`shardbox follow` on an empty directory) or retire it",
                r.through_lsn, r.generation, self.cfg.box_name
            )));
        }
        let info = stream
            .get_info()
            .await
            .map_err(retry("reading the stream's state"))?;
        let (start, last_seq) = if info.state.last_sequence > 0 {
            let m = stream
                .get_raw_message(info.state.last_sequence)
                .await
                .map_err(retry("reading the stream's last message"))?;
            let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_string());
            let pos: Position = header("Shardbox-Position")
                .ok_or_else(|| {
                    End::Resnapshot(format!(
                        "the last message of stream {} has no Shardbox-Position header: it was not written by this sink",
                        self.source.stream_name(&self.cfg)
                    ))
                })?
                .parse()
                .map_err(|e: String| End::Resnapshot(format!("the stream's last position: {e}")))?;
            // After the last change of its record: on from the next record (which a box whose
            // log begins after that record still holds).
            let pos = if header(RECORD_END_HEADER).is_some() {
                Position::after_record(pos.generation, pos.lsn)
            } else {
                pos
            };
            let ours = feed.generation();
            let pos = match feed.lineage() {
                _ if pos.generation == ours => pos,
                // This box continues the stream's history past where the stream ends (a box
                // rebuilt from the hub, a promoted standby): it goes on in its own.
                Some(l) if l.previous == pos.generation && pos.lsn <= l.through_lsn => Position {
                    generation: ours,
                    ..pos
                },
                _ => {
                    // Promoted in this box's place: a mark naming this history, or the role
                    // bucket listing it among those superseded (a later promotion).
                    let marked = header(PROMOTED_HEADER)
                        .is_some_and(|m| m.split(':').next() == Some(ours.to_string().as_str()));
                    if marked || role.as_ref().is_some_and(|r| r.supersedes(ours)) {
                        return Err(End::Fenced(format!(
                            "stream {} goes on in generation {}, a standby promoted in this box's place: this box (generation {ours}) is no longer the primary of box {} — rebuild it as a standby (`shardbox follow` on an empty directory) or retire it",
                            self.source.stream_name(&self.cfg),
                            pos.generation,
                            self.cfg.box_name
                        )));
                    }
                    return Err(End::Resnapshot(format!(
                        "stream {} ends in generation {} but this box's history is {ours} (restored since?): the stream cannot continue it",
                        self.source.stream_name(&self.cfg),
                        pos.generation,
                    )));
                }
            };
            (pos, info.state.last_sequence)
        } else {
            let at = match feed.cursors.position(self.source.cursor(), feed.oldest()) {
                Ok(p) => p,
                // First start: ship what the log still holds (for a new box, everything; an
                // older box's earlier data travels as an export).
                Err(FeedError::NoSuchCursor(_)) => feed.oldest().unwrap_or_else(|| feed.end()),
                Err(FeedError::Gone { .. }) => {
                    return Err(End::Resnapshot(
                        "the log let go of changes the sink had not shipped (feed_retain_bytes_max)".into(),
                    ))
                }
                Err(e) => return Err(End::Retry(format!("the sink's cursor: {e:?}"))),
            };
            (at, 0)
        };
        match feed.cursors.set(self.source.cursor(), start, feed.oldest()) {
            Ok(_) => {}
            Err(FeedError::Gone { .. }) => {
                return Err(End::Resnapshot(format!(
                    "the log no longer holds the changes after {start}, where the stream ends (feed_retain_bytes_max)"
                )))
            }
            Err(FeedError::Invalid(_)) => {
                // The cursor is ahead of the stream (the stream was made again by hand):
                // start the cursor over where the stream ends.
                let _ = feed.cursors.delete(self.source.cursor());
                feed.cursors
                    .set(self.source.cursor(), start, feed.oldest())
                    .map_err(|e| End::Resnapshot(format!("the sink's cursor: {e:?}")))?;
            }
            Err(e) => return Err(End::Retry(format!("the sink's cursor: {e:?}"))),
        }
        Ok((start, last_seq))
    }

    /// Reads the feed from `pos` and publishes every change, each naming the one before.
    async fn publish_from(
        &self,
        engine: &Arc<Engine>,
        js: &jetstream::Context,
        mut pos: Position,
        mut last_seq: u64,
        hub: Hub,
        tx: tokio::sync::mpsc::Sender<Pending>,
    ) -> Result<(), End> {
        let Hub {
            max_payload,
            atomic,
            window,
        } = hub;
        let feed = engine.feed();
        let mut commits = feed.commits();
        let mut ceiling_rx = self.ceiling.clone();
        let mut last_batch: Option<Instant> = None;
        loop {
            commits.borrow_and_update();
            let ceiling = ceiling_rx.as_mut().map(|rx| *rx.borrow_and_update());
            let (msgs, page_next, full, empty) =
                self.read_page(engine, pos, max_payload, ceiling).await?;
            let mut msgs = msgs.into_iter();
            let mut next: Option<Message> = msgs.next();
            while let Some(first) = next.take() {
                // Up to BATCH_MAX messages and BATCH_BYTES go as one atomic batch.
                let mut bytes = first.body.len();
                let mut batch = vec![first];
                if atomic {
                    for m in msgs.by_ref() {
                        if batch.len() >= BATCH_MAX || bytes + m.body.len() > BATCH_BYTES {
                            next = Some(m);
                            break;
                        }
                        bytes += m.body.len();
                        batch.push(m);
                    }
                }
                // A place in the window first, then the publish: at most `window` publishes
                // await their acks, wherever they are (sent, queued, or the acker's).
                let Ok(place) = window.clone().acquire_owned().await else {
                    return Ok(());
                };
                let mut pending = self.send(js, batch, &mut last_seq).await?;
                last_batch = Some(Instant::now());
                pending.place = Some(place);
                if tx.send(pending).await.is_err() {
                    // The acker ended with the session's error.
                    return Ok(());
                }
                if !atomic {
                    next = msgs.next();
                }
            }
            let moved = page_next != pos;
            pos = page_next;
            if moved {
                // Past every change of the page, and past records with none (the cache's and
                // idempotency's): acknowledged once what was published before is.
                let mark = Pending {
                    entry_position: pos,
                    at_ms: None,
                    ack: None,
                    count: 0,
                    place: None,
                };
                if tx.send(mark).await.is_err() {
                    return Ok(());
                }
            }
            // Far behind (more records than a page to go, such as a run of records with no
            // change: the cache's, idempotency's): on at once, no batch gap.
            let end = feed.end().lsn.min(ceiling.unwrap_or(u64::MAX));
            let behind = end.saturating_sub(pos.lsn) > PAGE as u64;
            if full || behind || (moved && empty) {
                self.set_state(State::CatchingUp);
                continue;
            }
            if self.state() != State::CatchingUp || tx.capacity() == tx.max_capacity() {
                self.set_state(State::Streaming);
            }
            if !moved {
                tokio::select! {
                    _ = commits.changed() => {}
                    _ = async {
                        match ceiling_rx.as_mut() {
                            Some(rx) => {
                                if rx.changed().await.is_err() {
                                    // The log sink is gone (the store closes).
                                    std::future::pending::<()>().await
                                }
                            }
                            None => std::future::pending().await,
                        }
                    } => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            // Streaming: a batch at most every LINGER, so the changes that arrive meanwhile go
            // together rather than one batch per commit. Each batch costs the box a feed read,
            // a publish and an ack however few changes it carries; a change after a quiet
            // spell still goes at once.
            if let Some(wait) = last_batch.and_then(|t| LINGER.checked_sub(t.elapsed())) {
                tokio::time::sleep(wait).await;
            }
        }
    }

    /// The next page's messages after `pos` (of records up to `ceiling`), where it ends,
    /// whether it was full, and whether it held nothing to ship.
    async fn read_page(
        &self,
        engine: &Arc<Engine>,
        pos: Position,
        max_payload: usize,
        ceiling: Option<u64>,
    ) -> Result<(Vec<Message>, Position, bool, bool), End> {
        let e2 = engine.clone();
        let failed = |e: FeedError| match e {
            FeedError::Gone { .. } => End::Resnapshot(format!(
                "the log no longer holds the records after {pos} (feed_retain_bytes_max)"
            )),
            // The stream is ahead of this box's log (a data directory rolled back with the
            // same generation): going on would ship other changes under its positions.
            FeedError::Ahead { last } => End::Resnapshot(format!(
                "the stream ends at {pos}, past this box's last change {last}: the box's data is older than what it shipped"
            )),
            e => End::Retry(format!("reading the feed: {e:?}")),
        };
        match self.source {
            Source::Changes => {
                let until = ceiling.unwrap_or(u64::MAX);
                let page = tokio::task::spawn_blocking(move || {
                    e2.feed().read_until(pos, PAGE, &Filter::default(), until)
                })
                .await
                .map_err(retry("reading the feed"))?
                .map_err(failed)?;
                let (entries, next) = (page.entries, page.next);
                let full = entries.len() >= PAGE;
                let mut msgs: Vec<Message> = entries
                    .iter()
                    .map(|e| self.message(e, max_payload))
                    .collect();
                // Which changes end their record: the next change is of another record, or
                // the page goes on past this record.
                let cut_inside = |lsn: u64| next.lsn == lsn && next.index != Position::WHOLE_RECORD;
                for k in 0..msgs.len() {
                    let lsn = msgs[k].position.lsn;
                    msgs[k].record_end = match msgs.get(k + 1) {
                        Some(m) => m.position.lsn != lsn,
                        None => !cut_inside(lsn),
                    };
                }
                Ok((msgs, next, full, entries.is_empty()))
            }
            Source::Log => {
                // Inside a record (some of its parts shipped): that record again, from the
                // part after.
                let from = if pos.index == Position::WHOLE_RECORD {
                    pos
                } else {
                    Position::after_record(pos.generation, pos.lsn.saturating_sub(1))
                };
                let (records, next) = tokio::task::spawn_blocking(move || {
                    e2.feed().read_records(from, PAGE)
                })
                .await
                .map_err(retry("reading the log"))?
                .map_err(failed)?;
                let full = records.len() >= PAGE;
                let mut msgs = Vec::with_capacity(records.len());
                for r in &records {
                    for m in self.log_messages(r, pos.generation) {
                        let shipped = r.lsn == pos.lsn
                            && pos.index != Position::WHOLE_RECORD
                            && m.position.index <= pos.index;
                        if !shipped {
                            msgs.push(m);
                        }
                    }
                }
                let next = if records.is_empty() { pos } else { next };
                let empty = msgs.is_empty();
                Ok((msgs, next, full, empty))
            }
        }
    }

    /// The messages that ship one log record: its frame, in parts of [`PART_BYTES`] (each part
    /// but the last at position `lsn:<part>`, the last at `lsn`, so a resume knows which parts
    /// the stream holds; the size is fixed, so a resume cuts a record where it was cut).
    fn log_messages(
        &self,
        r: &crate::engine::feed::LogRecord,
        generation: crate::engine::feed::Generation,
    ) -> Vec<Message> {
        let part_max = PART_BYTES;
        let parts = r.frame.len().div_ceil(part_max).max(1);
        (0..parts)
            .map(|k| {
                let body = r.frame[k * part_max..((k + 1) * part_max).min(r.frame.len())].to_vec();
                let position = if k + 1 == parts {
                    Position::after_record(generation, r.lsn)
                } else {
                    Position {
                        generation,
                        lsn: r.lsn,
                        index: k as u32,
                    }
                };
                Message {
                    subject: self.cfg.log_subject(),
                    id: format!("{}:{generation}:{}:log{k}", self.cfg.box_name, r.lsn),
                    position,
                    at_ms: None,
                    body: body.into(),
                    part: (parts > 1).then_some((k as u32 + 1, parts as u32)),
                    // A log record's last part is at the record's whole position already.
                    record_end: false,
                }
            })
            .collect()
    }

    /// The message that ships one change.
    fn message(&self, e: &Entry, max_payload: usize) -> Message {
        let c = &self.cfg;
        let mut subject = format!(
            "{}.{}.{}.{}",
            c.subject_prefix,
            c.box_name,
            e.change.domain,
            escape(&e.change.name)
        );
        // A KV change names its key too, so a KV bucket can source the box's keys.
        if let Some(key) = e.change.fields.get("key").and_then(|k| k.as_str()) {
            subject.push('.');
            subject.push_str(&escape(key));
        }
        let mut body = e.json_line();
        if body.len() + 1024 > max_payload {
            // Larger than the hub takes in one message: the change goes without its value,
            // saying so (the box still has it).
            body = too_large(e, body.len());
        }
        Message {
            subject,
            id: message_id(&c.box_name, e),
            position: e.position,
            at_ms: e.at_ms,
            body: body.into(),
            part: None,
            record_end: false,
        }
    }

    /// Publishes `batch` after stream sequence `last_seq`: one message alone, several as one
    /// atomic batch (ADR-50: JetStream stores all of them or none, and checks the batch's
    /// expected last sequence when it commits). Only the last message asks for an ack.
    async fn send(
        &self,
        js: &jetstream::Context,
        batch: Vec<Message>,
        last_seq: &mut u64,
    ) -> Result<Pending, End> {
        let count = batch.len() as u64;
        let Some((entry_position, at_ms)) = batch.last().map(|m| (m.position, m.at_ms)) else {
            return Err(End::Retry("an empty batch".into()));
        };
        let expected = *last_seq;
        let batch_id = (count > 1).then(|| format!("{:016x}{:016x}", rand::random::<u64>(), expected));
        let mut ack = None;
        for (i, m) in batch.into_iter().enumerate() {
            let seq = i as u64 + 1;
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", m.id.as_str());
            if seq == 1 {
                headers.insert("Nats-Expected-Last-Sequence", expected.to_string().as_str());
            }
            headers.insert("Shardbox-Position", m.position.to_string().as_str());
            if m.record_end {
                headers.insert(RECORD_END_HEADER, "1");
            }
            if let Some((k, n)) = m.part {
                headers.insert("Shardbox-Part", format!("{k}/{n}").as_str());
            }
            if let Some(id) = &batch_id {
                headers.insert("Nats-Batch-Id", id.as_str());
                headers.insert("Nats-Batch-Sequence", seq.to_string().as_str());
            }
            if let Some(at) = m.at_ms {
                let _ = self.oldest_unacked_ms.compare_exchange(
                    0,
                    at.max(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            if seq == count {
                if batch_id.is_some() {
                    headers.insert("Nats-Batch-Commit", "1");
                }
                ack = Some(
                    js.publish_with_headers(m.subject, headers, m.body)
                        .await
                        .map_err(retry("publishing"))?,
                );
            } else {
                // Staged by the stream's leader until the commit; no ack of its own.
                js.client()
                    .publish_with_headers(m.subject, headers, m.body)
                    .await
                    .map_err(retry("publishing"))?;
            }
        }
        self.published_total.fetch_add(count, Ordering::Relaxed);
        *last_seq += count;
        Ok(Pending {
            entry_position,
            at_ms,
            ack,
            count,
            place: None,
        })
    }

    /// Takes JetStream's acks in publish order; moves the acknowledged position and (about
    /// once a second) the cursor that holds the log.
    async fn settle(
        &self,
        engine: &Arc<Engine>,
        mut rx: tokio::sync::mpsc::Receiver<Pending>,
    ) -> Result<(), End> {
        let mut saved = Instant::now();
        let mut unsaved: Option<Position> = None;
        // The cursor's file is synced: off the async threads.
        let cursor = self.source.cursor();
        let save = |at: Position| {
            let engine = engine.clone();
            async move {
                let moved = tokio::task::spawn_blocking(move || {
                    let feed = engine.feed();
                    feed.cursors.set(cursor, at, feed.oldest())
                })
                .await;
                if let Ok(Err(e)) = moved {
                    tracing::warn!(error = ?e, "NATS sink: cannot move its feed cursor");
                }
            }
        };
        while let Some(p) = rx.recv().await {
            if let Some(ack) = p.ack {
                if let Err(e) = ack.await {
                    if let Some(at) = unsaved {
                        save(at).await;
                    }
                    return Err(End::Retry(format!("JetStream refused a publish: {e}")));
                }
                self.acked_total.fetch_add(p.count, Ordering::Relaxed);
            }
            // This session has moved on: the backlog's age comes from what it ships now.
            self.backlog_at_ms.store(0, Ordering::Relaxed);
            {
                let mut acked = self.acked.lock().unwrap_or_else(|p| p.into_inner());
                // A mark names no change: the last change shipped keeps its time.
                let at = p.at_ms.or_else(|| acked.and_then(|(_, at)| at));
                *acked = Some((p.entry_position, at));
            }
            self.note_acked(p.entry_position);
            if rx.is_empty() {
                self.oldest_unacked_ms.store(0, Ordering::Relaxed);
            } else if let Some(at) = p.at_ms {
                self.oldest_unacked_ms.store(at.max(1), Ordering::Relaxed);
            }
            unsaved = Some(p.entry_position);
            if saved.elapsed() >= SAVE_EVERY || rx.is_empty() && saved.elapsed() >= SAVE_EVERY / 4 {
                save(p.entry_position).await;
                unsaved = None;
                saved = Instant::now();
            }
        }
        if let Some(at) = unsaved {
            save(at).await;
        }
        Ok(())
    }
}

/// A NATS connection as `[sink.nats]` says (servers, token or credentials, TLS); `connected`,
/// when given, follows whether it is up (the client reconnects by itself).
pub async fn connect(
    c: &NatsSinkConfig,
    connected: Option<Arc<std::sync::atomic::AtomicBool>>,
) -> Result<async_nats::Client, String> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("shardbox {}", c.box_name))
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(5)));
    if let Some(connected) = connected {
        opts = opts.event_callback(move |event| {
            let connected = connected.clone();
            async move {
                match event {
                    async_nats::Event::Connected => connected.store(true, Ordering::Relaxed),
                    async_nats::Event::Disconnected | async_nats::Event::Closed => {
                        connected.store(false, Ordering::Relaxed)
                    }
                    _ => {}
                }
            }
        });
    }
    if let Some(t) = &c.token {
        opts = opts.token(t.clone());
    }
    if let Some(path) = &c.credentials {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|e| format!("[sink.nats] credentials: {e}"))?;
    }
    if let Some(ca) = &c.tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    opts.connect(c.servers.as_slice())
        .await
        .map_err(|e| format!("connecting to NATS: {e}"))
}

/// What the hub takes: the largest message, atomic batches or not, and how many publishes may
/// await their acks (a place each, given back once acknowledged).
struct Hub {
    max_payload: usize,
    atomic: bool,
    window: Arc<tokio::sync::Semaphore>,
}

/// One change's message.
struct Message {
    subject: String,
    id: String,
    position: Position,
    at_ms: Option<u64>,
    body: bytes::Bytes,
    /// A log record's part: (number from 1, parts) when it takes more than one message.
    part: Option<(u32, u32)>,
    /// The last change of its record ([`RECORD_END_HEADER`]).
    record_end: bool,
}

/// The header on the last change of a record in the changes stream: a sink that goes on from
/// it starts at the next record, so a box whose log no longer holds that record (rebuilt from
/// a snapshot taken after it, a promoted standby) can continue the stream.
pub const RECORD_END_HEADER: &str = "Shardbox-Record-End";

/// A publish (one message or one batch) waiting for its ack.
struct Pending {
    /// The last change it ships.
    entry_position: Position,
    at_ms: Option<u64>,
    /// Messages it ships.
    count: u64,
    /// `None`: a mark, acknowledged once everything before it is.
    ack: Option<jetstream::context::PublishAckFuture>,
    /// Its place in the window (none for a mark), given back when it is dropped: after its ack.
    place: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// A change too large for one NATS message, without its value: what it was and its size.
fn too_large(e: &Entry, bytes: usize) -> Vec<u8> {
    let mut c = e.change.clone();
    for field in ["value", "data", "payload"] {
        c.fields.remove(field);
    }
    c.fields
        .insert("omitted_bytes".into(), serde_json::Value::from(bytes as u64));
    Entry {
        position: e.position,
        at_ms: e.at_ms,
        change: c,
    }
    .json_line()
}

/// A name as one subject token: `A-Z a-z 0-9 _ -` as they are, every other byte (the dot, `*`,
/// `>`, `=`, spaces, non-ASCII) as `=XX` of its UTF-8 bytes (`=` is valid in a subject and in a
/// JetStream KV key, `%` is not in the latter); [`unescape`] reverses it.
pub fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("=00");
    }
    out
}

/// The name a subject token stands for ([`escape`] reversed).
#[cfg_attr(not(test), allow(dead_code))]
pub fn unescape(token: &str) -> Option<String> {
    if token == "=00" {
        return Some(String::new());
    }
    let b = token.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A change's `Nats-Msg-Id`: `<box>:<generation>:<lsn>:<index>`.
pub fn message_id(box_name: &str, e: &Entry) -> String {
    format!(
        "{box_name}:{}:{}:{}",
        e.position.generation, e.position.lsn, e.position.index
    )
}

// The role bucket: which generation is the box's primary (written by a promotion,
// read by every sink before it publishes).

/// The read-only code of a box a promoted standby replaced (409: it lasts).
pub const FENCED: &str = "fenced";

/// The header a promotion's mark carries: `<previous generation>:<last record>`
/// (`store::follow`).
pub const PROMOTED_HEADER: &str = "Shardbox-Promoted";

/// The key of the role bucket that names the box's primary.
pub const ROLE_KEY: &str = "primary";
/// The key-value bucket that names a box's primary.
pub fn role_bucket(cfg: &NatsSinkConfig) -> String {
    format!("{}_{}_ROLE", cfg.stream, cfg.box_name)
}

/// The role bucket's record: which generation is the box's primary, and what it continues.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Role {
    pub generation: String,
    pub previous: String,
    pub through_lsn: u64,
    pub at_ms: u64,
    /// The data directory promoted (its `NODE` id): a box started with `follow` on it would
    /// follow itself.
    #[serde(default)]
    pub node: String,
    /// Every generation a promotion superseded (the newest 64), `previous` last.
    #[serde(default)]
    pub superseded: Vec<String>,
}

impl Role {
    /// Whether a standby was promoted in the place of history `g` (or of one after it).
    pub fn supersedes(&self, g: crate::engine::feed::Generation) -> bool {
        let g = g.to_string();
        self.previous == g || self.superseded.contains(&g)
    }
}

/// The box's primary as the hub's role bucket names it (`None`: no standby was ever promoted).
pub async fn role(js: &jetstream::Context, cfg: &NatsSinkConfig) -> Result<Option<Role>, String> {
    // Only a bucket that is not there means no promotion: any other failure (a timeout) is
    // an error, never a pass.
    match js.get_stream(format!("KV_{}", role_bucket(cfg))).await {
        Ok(_) => {}
        Err(e) => {
            use jetstream::context::GetStreamErrorKind;
            return match e.kind() {
                GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(None)
                }
                _ => Err(format!("bucket {}: {e}", role_bucket(cfg))),
            };
        }
    }
    let kv = js
        .get_key_value(role_bucket(cfg))
        .await
        .map_err(|e| format!("bucket {}: {e}", role_bucket(cfg)))?;
    match kv.get(ROLE_KEY).await {
        Ok(Some(v)) => serde_json::from_slice::<Role>(&v)
            .map(Some)
            .map_err(|e| format!("bucket {} key {ROLE_KEY}: {e}", role_bucket(cfg))),
        Ok(None) => Ok(None),
        Err(e) => Err(format!("bucket {}: {e}", role_bucket(cfg))),
    }
}

/// Records `role` as the box's primary in the role bucket (made when missing).
pub(crate) async fn put_role(js: &jetstream::Context, cfg: &NatsSinkConfig, role: &Role) -> Result<(), String> {
    let kv = js
        .create_or_update_key_value(jetstream::kv::Config {
            bucket: role_bucket(cfg),
            history: 16,
            num_replicas: cfg.replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("bucket {}: {e}", role_bucket(cfg)))?;
    let body = serde_json::to_vec(role).map_err(|e| e.to_string())?;
    kv.put(ROLE_KEY, body.into())
        .await
        .map(|_| ())
        .map_err(|e| format!("bucket {}: {e}", role_bucket(cfg)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_escape_to_one_subject_token_and_back() {
        for name in ["app", "a.b", "x*y>z", "50%", "a=b", "naïve name", "", "a-b_c"] {
            let t = escape(name);
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-=".contains(&b)),
                "{t}"
            );
            assert_eq!(unescape(&t).as_deref(), Some(name));
        }
        assert_eq!(escape("a.b"), "a=2Eb");
        assert_eq!(unescape("=zz"), None);
    }
}

