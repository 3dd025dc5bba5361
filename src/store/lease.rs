//! Automatic failover (`[sink.nats] failover = "auto"`): the primary's lease.
//!
//! The primary holds the key `primary` of the hub's key-value bucket `<stream>_<box>_LEASE`,
//! whose entries live `lease_ms` (the bucket's `max_age`). It renews the key every fifth of
//! that by compare-and-set (`update` with the revision it last wrote), and takes writes only
//! while its last renewal was *sent* less than three fifths of `lease_ms` ago
//! ([`Lease::hold`]); the entry that renewal made lives at least `lease_ms` from the same
//! moment, so a primary cut off from the hub stops writing at least two fifths of the lease
//! before any standby can take its place.
//!
//! A standby ([`Lease::watch`]) looks at the key every fifth of the lease. Once the key has
//! expired (the primary stopped renewing it) — and only if it has seen a primary hold it since
//! it started, so a standby of a box without automatic failover never promotes itself — it
//! creates the key as a candidate (compare-and-set on "no key": of several standbys, one wins)
//! and runs the same promotion as `shardbox promote` (`store::follow`), renewing its candidacy
//! meanwhile. The promotion's mark in the log stream, not the lease, is what makes two
//! primaries impossible: the lease only decides when to try, and makes an old primary that
//! lost the hub stop taking writes before it is replaced. Once promoted, the standby holds the
//! lease as the primary; if the promotion fails, it lets the key go.
//!
//! A primary that finds the key held by another box waits (writes get 503 `no_lease`) until
//! the key is free; one fenced by a promotion lets its lease go at once. A promoted box takes
//! the key whoever holds it (its mark is in the log stream: it is the primary), so an old
//! primary that still renews loses it at its next renewal and stops writing.
//!
//! Holders are told apart by the data directory's own id (`<data>/NODE`, which no backup or
//! snapshot carries): a primary restarted on its directory takes its lease back at once. The
//! lease's length is the bucket's `max_age`, as the first box made it: a box whose `lease_ms`
//! differs says so and times itself by the bucket's.

use super::follow::{Standby, State};
use super::Store;
use crate::base::config::NatsSinkConfig;
use crate::engine::Engine;
use async_nats::jetstream::{self, kv};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The lease's key in its bucket.
pub const KEY: &str = "primary";
/// The read-only code of a primary without its lease (503, it passes).
pub const NO_LEASE: &str = "no_lease";
/// How long a standby keeps its candidacy while its promotion runs, at most.
const CANDIDACY_MAX: Duration = Duration::from_secs(90);

/// The lease entry's value: who holds it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    /// The holding data directory (its `NODE` id): a primary restarted on it takes its lease
    /// back.
    pub node: String,
    /// Its history: a primary restarted with the same history takes its lease back.
    pub generation: String,
    /// `primary`, or `candidate` (a standby promoting itself).
    pub role: String,
    pub at_ms: u64,
}

/// This box's side of the lease, and what it reports (status, metrics, `/readyz`).
pub struct Lease {
    pub cfg: NatsSinkConfig,
    node: String,
    /// The lease's length in ms: the bucket's `max_age` once read, `lease_ms` before.
    lease_ms: AtomicU64,
    inner: Mutex<Inner>,
    pub renewals_total: AtomicU64,
    pub lost_total: AtomicU64,
    pub errors_total: AtomicU64,
    pub promotions_total: AtomicU64,
}

#[derive(Default)]
struct Inner {
    /// The revision of the entry this box wrote last, and when that write was sent.
    held: Option<(u64, Instant)>,
    /// The holder as last seen.
    seen: Option<Holder>,
    /// A primary was seen holding the lease since this process started.
    seen_primary: bool,
    last_error: Option<String>,
}

impl Lease {
    pub fn new(cfg: NatsSinkConfig, node: String) -> Lease {
        Lease {
            lease_ms: AtomicU64::new(cfg.lease_ms),
            cfg,
            node,
            inner: Mutex::new(Inner::default()),
            renewals_total: AtomicU64::new(0),
            lost_total: AtomicU64::new(0),
            errors_total: AtomicU64::new(0),
            promotions_total: AtomicU64::new(0),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lease's length in ms.
    pub fn lease_ms(&self) -> u64 {
        self.lease_ms.load(Ordering::Relaxed)
    }

    /// How often the lease is renewed (and looked at), and how long one renewal may take.
    fn every(&self) -> Duration {
        Duration::from_millis(self.lease_ms() / 5)
    }

    /// How long opening the bucket (connecting) may take: with a renewal's own fifth, less
    /// than the three fifths a primary holds its lease without a renewal.
    fn open_timeout(&self) -> Duration {
        self.every()
    }

    /// Whether this box holds the lease: its last write of it was sent less than three fifths
    /// of the lease ago.
    pub fn holds(&self) -> bool {
        let valid = Duration::from_millis(self.lease_ms() * 3 / 5);
        self.inner()
            .held
            .is_some_and(|(_, sent)| sent.elapsed() < valid)
    }

    /// A primary takes writes while it holds the lease, and not otherwise (a refusal for a
    /// lasting reason, `fenced`, stays as it is).
    pub fn gate(&self, engine: &Engine) {
        if self.holds() {
            engine.clear_read_only_if(NO_LEASE);
        } else {
            let why = match self.inner().seen.as_ref() {
                Some(h) if h.node != self.node => format!(
                    "this primary does not hold its lease (failover = \"auto\"): box {}'s lease in bucket {} is held by another process ({} of generation {}); writes resume when this box holds it again",
                    self.cfg.box_name,
                    self.cfg.lease_bucket(),
                    h.role,
                    h.generation
                ),
                _ => format!(
                    "this primary does not hold its lease (failover = \"auto\"): it could not renew it in bucket {} within {} ms (is the hub reachable?); writes resume when it does",
                    self.cfg.lease_bucket(),
                    self.lease_ms() * 3 / 5
                ),
            };
            engine.set_read_only_unless_other(NO_LEASE, why);
        }
    }

    fn note_error(&self, e: String) {
        self.errors_total.fetch_add(1, Ordering::Relaxed);
        self.inner().last_error = Some(e);
    }

    fn took(&self, revision: u64, sent: Instant, me: Holder) {
        self.renewals_total.fetch_add(1, Ordering::Relaxed);
        let mut i = self.inner();
        i.held = Some((revision, sent));
        i.seen = Some(me);
        i.last_error = None;
    }

    fn lost(&self, holder: Option<Holder>) {
        let mut i = self.inner();
        if i.held.take().is_some() {
            self.lost_total.fetch_add(1, Ordering::Relaxed);
        }
        if holder.is_some() {
            i.seen = holder;
        }
    }

    /// The bucket (made when missing, entries living `lease_ms`); the lease's length is then
    /// the bucket's `max_age`, whoever made it.
    async fn bucket(&self) -> Result<kv::Store, String> {
        let name = self.cfg.lease_bucket();
        let client = super::sink::connect(&self.cfg, None).await?;
        let js = jetstream::new(client);
        let bucket = match js.get_key_value(&name).await {
            Ok(b) => b,
            Err(_) => match js
                .create_key_value(kv::Config {
                    bucket: name.clone(),
                    history: 1,
                    max_age: Duration::from_millis(self.cfg.lease_ms),
                    num_replicas: self.cfg.replicas,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
            {
                Ok(b) => b,
                // Made by another box meanwhile?
                Err(e) => js
                    .get_key_value(&name)
                    .await
                    .map_err(|_| format!("bucket {name}: {e}"))?,
            },
        };
        let b = bucket.clone();
        let max_age = b
            .status()
            .await
            .map_err(|e| format!("bucket {name}: {e}"))?
            .max_age()
            .as_millis() as u64;
        if max_age < 1000 {
            return Err(format!(
                "bucket {name} has max_age {max_age} ms: a lease's entries must expire (at least 1000 ms); delete the bucket so the primary makes it again"
            ));
        }
        if max_age != self.lease_ms.swap(max_age, Ordering::Relaxed) && max_age != self.cfg.lease_ms {
            tracing::warn!(bucket = %name, bucket_max_age_ms = max_age, lease_ms = self.cfg.lease_ms, "the lease bucket's max_age differs from this box's lease_ms: the bucket's is the lease's length");
        }
        Ok(bucket)
    }

    fn me(&self, engine: &Engine, role: &str) -> (Holder, bytes::Bytes) {
        let me = Holder {
            node: self.node.clone(),
            generation: engine.feed().generation().to_string(),
            role: role.into(),
            at_ms: engine.now_ms(),
        };
        let body = serde_json::to_vec(&me).unwrap_or_default().into();
        (me, body)
    }

    /// The key as it is: its revision (0: never written or expired) and its holder (`None`:
    /// free — expired, deleted, never written — to be taken with that revision).
    async fn look(&self, bucket: &kv::Store) -> Result<(u64, Option<Holder>), String> {
        let entry = bucket
            .entry(KEY)
            .await
            .map_err(|e| format!("bucket {}: {e}", self.cfg.lease_bucket()))?;
        Ok(match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                // A value no shardbox wrote is someone's all the same.
                let holder = serde_json::from_slice(&e.value).unwrap_or(Holder {
                    node: String::new(),
                    generation: String::new(),
                    role: "unknown".into(),
                    at_ms: 0,
                });
                let mut i = self.inner();
                i.seen_primary |= holder.role == "primary";
                i.seen = Some(holder.clone());
                (e.revision, Some(holder))
            }
            Some(e) => (e.revision, None),
            None => (0, None),
        })
    }

    /// One renewal of a primary's lease, or an attempt to take it when it is not held.
    async fn renew(&self, bucket: &kv::Store, engine: &Engine) -> Result<(), String> {
        let sent = Instant::now();
        let (me, body) = self.me(engine, "primary");
        let held = self.inner().held.map(|(r, _)| r);
        if let Some(revision) = held {
            match bucket.update(KEY, body.clone(), revision).await {
                Ok(r) => {
                    self.took(r, sent, me);
                    return Ok(());
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    // Expired, or taken: look at what is there.
                    self.lost(None);
                    tracing::warn!(bucket = %self.cfg.lease_bucket(), "the primary's lease was not renewed in time or was taken: writes stop until it holds it again");
                }
                Err(e) => return Err(format!("renewing the lease: {e}")),
            }
        }
        let (revision, holder) = self.look(bucket).await?;
        // Free, or this directory's (the box restarted).
        let ours = holder.as_ref().is_none_or(|h| h.node == self.node);
        if !ours {
            self.lost(holder);
            return Ok(());
        }
        match bucket.update(KEY, body, revision).await {
            Ok(r) => {
                self.took(r, sent, me);
                tracing::info!(bucket = %self.cfg.lease_bucket(), "this primary holds its lease");
                Ok(())
            }
            // Someone else was quicker: next round.
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(()),
            Err(e) => Err(format!("taking the lease: {e}")),
        }
    }

    /// Opens the bucket if it is not open (within [`Lease::open_timeout`]).
    async fn open(&self, bucket: &mut Option<kv::Store>) -> Result<kv::Store, String> {
        if let Some(b) = bucket.as_ref() {
            return Ok(b.clone());
        }
        let b = tokio::time::timeout(self.open_timeout(), self.bucket())
            .await
            .map_err(|_| "the hub did not answer in time".to_string())??;
        *bucket = Some(b.clone());
        Ok(b)
    }

    /// Takes the key whoever holds it: a promoted box is the primary (its mark is in the log
    /// stream), and an old primary still renewing must lose it.
    async fn seize(&self, bucket: &kv::Store, engine: &Engine) -> Result<(), String> {
        let sent = Instant::now();
        let (me, body) = self.me(engine, "primary");
        let revision = bucket
            .put(KEY, body)
            .await
            .map_err(|e| format!("taking the lease: {e}"))?;
        self.took(revision, sent, me);
        Ok(())
    }

    /// A primary's side: renews the lease every fifth of it (at a fixed rate), and refuses
    /// writes whenever it does not hold it. A promoted box (`seize`) first takes the key
    /// whoever holds it. Ends when the box stops or is fenced (it lets the lease go then).
    pub async fn hold(self: Arc<Self>, store: Store, mut seize: bool) {
        let engine = store.engine().clone();
        let watchdog = tokio::spawn(self.clone().watchdog(engine.clone()));
        let mut bucket: Option<kv::Store> = None;
        loop {
            let started = tokio::time::Instant::now();
            if engine.read_only().is_some_and(|(c, _)| c == super::sink::FENCED) {
                // A standby took over: let it have the lease at once.
                let held = self.inner().held;
                if let (Some(b), Some((revision, _))) = (bucket.as_ref(), held) {
                    let _ = tokio::time::timeout(
                        self.every(),
                        b.delete_expect_revision(KEY, Some(revision)),
                    )
                    .await;
                }
                self.lost(None);
                break;
            }
            let round = async {
                let b = self.open(&mut bucket).await?;
                let r = tokio::time::timeout(self.every(), async {
                    if seize {
                        self.seize(&b, &engine).await
                    } else {
                        self.renew(&b, &engine).await
                    }
                })
                .await
                .map_err(|_| "the hub did not answer in time".to_string())?;
                if r.is_ok() {
                    seize = false;
                }
                r
            };
            // The bucket stays open through errors: the client reconnects by itself.
            if let Err(e) = round.await {
                tracing::warn!(error = %e, "the primary's lease");
                self.note_error(e);
            }
            self.gate(&engine);
            tokio::select! {
                _ = tokio::time::sleep_until(started + self.every()) => {}
                _ = engine.stopping() => break,
            }
        }
        watchdog.abort();
    }

    /// Refuses writes the moment the lease runs out, whatever a renewal is waiting for (the
    /// renewal's own gate opens them again).
    async fn watchdog(self: Arc<Self>, engine: Arc<Engine>) {
        let mut held = None;
        loop {
            let now = self.holds();
            if held != Some(now) {
                held = Some(now);
                self.gate(&engine);
            }
            let tick = Duration::from_millis((self.lease_ms() / 50).clamp(20, 100));
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = engine.stopping() => return,
            }
        }
    }

    /// A standby's side: looks at the lease every fifth of it, and once it has expired,
    /// promotes this standby (see the module's doc).
    pub async fn watch(self: Arc<Self>, standby: Arc<Standby>, store: Store) {
        let engine = store.engine().clone();
        let mut bucket: Option<kv::Store> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.every()) => {}
                _ = engine.stopping() => return,
            }
            match standby.state() {
                State::Promoted => return,
                State::Following if standby.caught_up_once() => {}
                _ => continue,
            }
            let looked = async {
                let b = self.open(&mut bucket).await?;
                let looked = tokio::time::timeout(self.every(), self.look(&b))
                    .await
                    .map_err(|_| "the hub did not answer in time".to_string())??;
                Ok::<_, String>((b, looked))
            };
            let (b, free) = match looked.await {
                Ok((b, (revision, None))) => (b, revision),
                Ok(_) => continue,
                Err(e) => {
                    self.note_error(e);
                    continue;
                }
            };
            if !self.inner().seen_primary {
                continue;
            }
            let sent = Instant::now();
            let (me, body) = self.me(&engine, "candidate");
            let revision = match tokio::time::timeout(self.every(), b.update(KEY, body, free)).await {
                Ok(Ok(r)) => r,
                // Another standby was quicker, the primary came back, or no answer.
                _ => continue,
            };
            self.took(revision, sent, me);
            tracing::warn!(bucket = %self.cfg.lease_bucket(), lease_ms = self.lease_ms(), "the primary's lease expired: promoting this standby");
            let promotion = standby.promote(&store);
            tokio::pin!(promotion);
            // The candidacy is kept while the promotion runs, for at most this long: a
            // promotion stuck longer lets a returning primary have its lease back.
            let keep_until = tokio::time::Instant::now() + CANDIDACY_MAX;
            let result = loop {
                tokio::select! {
                    r = &mut promotion => break r,
                    _ = tokio::time::sleep(self.every()), if tokio::time::Instant::now() < keep_until => {
                        let held = self.inner().held.map(|(r, _)| r);
                        if let Some(r) = held {
                            let sent = Instant::now();
                            let (me, body) = self.me(&engine, "candidate");
                            if let Ok(Ok(r)) = tokio::time::timeout(self.every(), b.update(KEY, body, r)).await {
                                self.took(r, sent, me);
                            }
                        }
                    }
                }
            };
            match result {
                Ok(p) => {
                    // The promoted box's `hold` has the lease from here.
                    self.promotions_total.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(generation = %p.generation, took_ms = p.took_ms, "standby promoted itself: this box is the primary");
                    return;
                }
                Err((_, code, message)) => {
                    tracing::warn!(code, error = %message, "the automatic promotion did not happen; letting the lease go");
                    self.note_error(format!("promotion: {code}: {message}"));
                    let held = self.inner().held.map(|(r, _)| r);
                    if let Some(r) = held {
                        let _ = tokio::time::timeout(
                            self.every(),
                            b.delete_expect_revision(KEY, Some(r)),
                        )
                        .await;
                    }
                    self.lost(None);
                }
            }
        }
    }

    pub fn status_json(&self) -> serde_json::Value {
        let holds = self.holds();
        let i = self.inner();
        serde_json::json!({
            "bucket": self.cfg.lease_bucket(),
            "lease_ms": self.lease_ms(),
            "node": self.node,
            "held": holds,
            "renewed_ms_ago": i.held.map(|(_, sent)| sent.elapsed().as_millis() as u64),
            "holder": i.seen,
            "renewals_total": self.renewals_total.load(Ordering::Relaxed),
            "lost_total": self.lost_total.load(Ordering::Relaxed),
            "promotions_total": self.promotions_total.load(Ordering::Relaxed),
            "errors_total": self.errors_total.load(Ordering::Relaxed),
            "last_error": i.last_error,
        })
    }
}
