//! Every knob and limit of shardbox, in one place.
//!
//! Each field carries its unit in its name and documents its default. A value is resolved with
//! the precedence `--flag` > `SHARDBOX_<FIELD>` environment variable > `--config FILE` (TOML) >
//! built-in default. Every field can be set from the file and the environment; the most common
//! ones also have a flag, and any field can be set from the command line with `--set key=value`.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Implements the string form of a typed setting: parsed once when the config is read (TOML,
/// environment, flags all arrive as text), shown back the same way.
macro_rules! text_setting {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                <$t>::parse(&s)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.to_string()
            }
        }
    };
}

/// How a commit relates to the reply a client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DurabilityMode {
    /// The reply is sent after the commit holding the write has been fsync'd.
    Immediate,
    /// Commits are not fsync'd; an fsync'd commit runs every `interval`. A crash loses at most the
    /// writes acknowledged during the last interval (plus one batch).
    Periodic { interval: Duration },
}

impl DurabilityMode {
    /// Parses `immediate` or `periodic:<ms>`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("immediate") {
            return Ok(Self::Immediate);
        }
        if let Some(ms) = text.strip_prefix("periodic:") {
            let ms: u64 = ms.trim_end_matches("ms").parse().map_err(|_| {
                format!("durability `{text}`: periodic needs milliseconds, e.g. periodic:100")
            })?;
            if ms == 0 || ms > 60_000 {
                return Err(format!(
                    "durability `{text}`: the interval must be 1..=60000 ms"
                ));
            }
            return Ok(Self::Periodic {
                interval: Duration::from_millis(ms),
            });
        }
        Err(format!(
            "durability `{text}`: expected `immediate` or `periodic:<ms>`"
        ))
    }
}

impl std::fmt::Display for DurabilityMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Immediate => f.write_str("immediate"),
            Self::Periodic { interval } => write!(f, "periodic:{}", interval.as_millis()),
        }
    }
}
text_setting!(DurabilityMode);

/// The memory tier's (and the KV read cache's) eviction policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum EvictionPolicy {
    S3Fifo,
    /// Window TinyLFU.
    Lfu,
    Lru,
}

impl EvictionPolicy {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "s3fifo" | "s3-fifo" => Ok(Self::S3Fifo),
            "lfu" | "w-tinylfu" | "tinylfu" => Ok(Self::Lfu),
            "lru" => Ok(Self::Lru),
            other => Err(format!(
                "cache_eviction `{other}`: expected s3fifo, lfu (w-TinyLFU) or lru"
            )),
        }
    }

    /// foyer's configuration for this policy (the cache's memory tier, the KV read cache).
    pub fn foyer_config(self) -> foyer::EvictionConfig {
        match self {
            Self::S3Fifo => foyer::S3FifoConfig::default().into(),
            Self::Lfu => foyer::LfuConfig::default().into(),
            Self::Lru => foyer::LruConfig::default().into(),
        }
    }
}

impl std::fmt::Display for EvictionPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::S3Fifo => "s3fifo",
            Self::Lfu => "lfu",
            Self::Lru => "lru",
        })
    }
}
text_setting!(EvictionPolicy);

/// A stream bucket width: one of the widths `1h`, `1d`, `7d`, `30d` (`BUCKET_WIDTHS`), in ms (only a parsed width
/// can be built, so it always shows back as its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BucketWidth(u64);

impl BucketWidth {
    pub fn ms(self) -> u64 {
        self.0
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        crate::base::util::parse_bucket_ms(text)
            .map(Self)
            .map_err(|e| format!("default_bucket: {e}"))
    }
}

impl std::fmt::Display for BucketWidth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match crate::base::util::BUCKET_WIDTHS
            .iter()
            .find(|(_, ms)| *ms == self.0)
        {
            Some((name, _)) => f.write_str(name),
            None => write!(f, "{}ms", self.0),
        }
    }
}
text_setting!(BucketWidth);

/// How the cache's disk tier does I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DiskIo {
    /// pread/pwrite on blocking threads.
    Psync,
    /// io_uring.
    Uring,
}

impl DiskIo {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "psync" => Ok(Self::Psync),
            "uring" => Ok(Self::Uring),
            other => Err(format!("cache_disk_io `{other}`: expected psync or uring")),
        }
    }
}

impl std::fmt::Display for DiskIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Psync => "psync",
            Self::Uring => "uring",
        })
    }
}
text_setting!(DiskIo);

/// The access log's line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// One JSON object per request (default).
    #[default]
    Json,
    /// The Common Log Format (`host ident user [time] "request" status bytes`), with the
    /// request id and the duration appended.
    Common,
}

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The resolved configuration: the data directory and the log format, then one typed section
/// per layer and domain. The sections are flattened, so the TOML file, the `SHARDBOX_*`
/// variables and the flags name every setting as they always have (`value_bytes_max`, not
/// `kv.value_bytes_max`); each layer and domain reads its own section. See
/// `docs/operations.md` for the table of every setting.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Data directory; created if absent. Default `./shardbox-data`.
    pub data_dir: PathBuf,
    /// `text` (default) or `json`.
    pub log_format: LogFormat,
    /// The storage engine: shards, the write-ahead log, checkpoints, writer queues, disk space.
    #[serde(flatten)]
    pub engine: EngineConfig,
    /// The KV domain: value and batch bounds, listing, TTL sweeps, the read cache.
    #[serde(flatten)]
    pub kv: KvConfig,
    /// The queue domain: job bounds, claims and leases, timers, schedules.
    #[serde(flatten)]
    pub queue: QueueConfig,
    /// The events domain: event bounds, ranges, buckets and retention.
    #[serde(flatten)]
    pub events: EventsConfig,
    /// The cache domain: its memory and disk tiers, fills, waits, tags.
    #[serde(flatten)]
    pub cache: CacheConfig,
    /// Idempotency keys: how long a first response is kept.
    #[serde(flatten)]
    pub idempotency: IdempotencyConfig,
    /// The HTTP server: the socket, connections, timeouts, bodies, tokens, TLS, rate limits.
    #[serde(flatten)]
    pub http: HttpConfig,
    /// Where the change feed is shipped off the box (`[sink.nats]`); off by default.
    pub sink: SinkConfig,
}

/// Sinks of the change feed: `[sink.nats]` ships it into NATS JetStream.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinkConfig {
    pub nats: Option<NatsSinkConfig>,
}

/// `[sink.nats]`: every change of the feed as one JetStream message, in order, once.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
    /// NATS server URLs (`nats://host:4222`, `tls://…`).
    pub servers: Vec<String>,
    /// This box's name in subjects, message ids and its stream's name: 1–64 of
    /// `A-Z a-z 0-9 _ -`.
    #[serde(rename = "box")]
    pub box_name: String,
    /// The stream name's stem: the box writes stream `<stream>_<box>`. Default `SHARDBOX`.
    #[serde(default = "default_sink_stream")]
    pub stream: String,
    /// Subjects are `<subject_prefix>.<box>.<domain>.<name>`. Default `shardbox`.
    #[serde(default = "default_sink_prefix")]
    pub subject_prefix: String,
    /// Replicas of the stream when the sink creates it (1–5). Default 1.
    #[serde(default = "default_sink_replicas")]
    pub replicas: usize,
    /// A token for the NATS server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A user credentials file (JWT and NKey seed), as `nats` tools use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for TLS (and TLS is required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// Publishes whose acks may be outstanding at once (1–65536). Default 1024.
    #[serde(default = "default_sink_window")]
    pub window: usize,
    /// Also ship the log itself, record by record, to stream `<stream>_<box>_LOG`, and
    /// snapshots to object store `<stream>_<box>_SNAPSHOTS`: what `shardbox restore
    /// --from-nats` rebuilds the box from. Default false.
    #[serde(default)]
    pub ship_log: bool,
    /// With `ship_log`, a snapshot every this many ms (0: only on demand, `POST
    /// /v1/admin/snapshot`). Default 21,600,000 (6 h).
    #[serde(default = "default_snapshot_interval")]
    pub snapshot_interval_ms: u64,
    /// Snapshots kept in the object store (1–100; older ones are deleted once a new one is
    /// whole). Default 3.
    #[serde(default = "default_snapshots_keep")]
    pub snapshots_keep: usize,
    /// What a write's reply waits for: `local` (default: this box's log, as without the sink)
    /// or `hub` (also JetStream's ack of everything committed when the write finished — the
    /// log stream's with `ship_log`, else the changes'), so a box lost after a reply loses
    /// nothing it acknowledged.
    #[serde(default)]
    pub ack: SinkAck,
    /// With `ack = "hub"`, how long a reply waits for the hub before it is 504
    /// `hub_ack_timeout` (the write stays done on the box). Default 5000.
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout_ms: u64,
    /// Who promotes a standby: `manual` (default: an operator runs `shardbox promote`) or
    /// `auto`: the primary holds a lease in the hub's key-value bucket `<stream>_<box>_LEASE`,
    /// renewed by compare-and-set, and takes writes only while it holds it; a standby
    /// promotes itself once the lease has expired. Needs `ship_log`.
    #[serde(default)]
    pub failover: Failover,
    /// With `failover = "auto"`, the lease's length in ms (1000-600000): it is renewed every
    /// fifth of it; a primary that could not renew it for three fifths stops taking writes,
    /// and a standby takes over once it has expired. Default 10000.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
}

/// `[sink.nats] failover`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Failover {
    #[default]
    Manual,
    Auto,
}

fn default_lease_ms() -> u64 {
    10_000
}

/// `[sink.nats] ack`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkAck {
    #[default]
    Local,
    Hub,
}

fn default_ack_timeout() -> u64 {
    5000
}

fn default_snapshot_interval() -> u64 {
    6 * 3600 * 1000
}
fn default_snapshots_keep() -> usize {
    3
}

fn default_sink_stream() -> String {
    "SHARDBOX".into()
}
fn default_sink_prefix() -> String {
    "shardbox".into()
}
fn default_sink_replicas() -> usize {
    1
}
fn default_sink_window() -> usize {
    1024
}

impl std::fmt::Debug for NatsSinkConfig {
    /// Every setting but the token's value (a config printed in a log must not carry it).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSinkConfig")
            .field("servers", &self.servers)
            .field("box", &self.box_name)
            .field("stream", &self.stream)
            .field("subject_prefix", &self.subject_prefix)
            .field("replicas", &self.replicas)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("credentials", &self.credentials)
            .field("tls_ca", &self.tls_ca)
            .field("window", &self.window)
            .field("ship_log", &self.ship_log)
            .field("snapshot_interval_ms", &self.snapshot_interval_ms)
            .field("snapshots_keep", &self.snapshots_keep)
            .field("ack", &self.ack)
            .field("ack_timeout_ms", &self.ack_timeout_ms)
            .field("failover", &self.failover)
            .field("lease_ms", &self.lease_ms)
            .finish()
    }
}

impl NatsSinkConfig {
    /// The stream this box writes.
    pub fn stream_name(&self) -> String {
        format!("{}_{}", self.stream, self.box_name)
    }

    /// The stream of the box's log records (`ship_log`).
    pub fn log_stream_name(&self) -> String {
        format!("{}_{}_LOG", self.stream, self.box_name)
    }

    /// The subject of the box's log records: `<subject_prefix>_log.<box>` (outside the changes'
    /// `<subject_prefix>.<box>.>`).
    pub fn log_subject(&self) -> String {
        format!("{}_log.{}", self.subject_prefix, self.box_name)
    }

    /// The key-value bucket of the primary's lease (`failover = "auto"`).
    pub fn lease_bucket(&self) -> String {
        format!("{}_{}_LEASE", self.stream, self.box_name)
    }

    /// The object store of the box's snapshots (`ship_log`).
    pub fn snapshot_bucket(&self) -> String {
        format!("{}_{}_SNAPSHOTS", self.stream, self.box_name)
    }

    fn validate(&self) -> Result<(), String> {
        let token_ok = |s: &str, what: &str, dots: bool| -> Result<(), String> {
            let ok = !s.is_empty()
                && s.len() <= 64
                && s.split('.').all(|t| {
                    !t.is_empty()
                        && t.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                })
                && (dots || !s.contains('.'));
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "[sink.nats] {what} = `{s}`: 1-64 of A-Z a-z 0-9 _ -{}",
                    if dots { " (and dots between tokens)" } else { "" }
                ))
            }
        };
        token_ok(&self.box_name, "box", false)?;
        token_ok(&self.stream, "stream", false)?;
        token_ok(&self.subject_prefix, "subject_prefix", true)?;
        if self.servers.is_empty() {
            return Err("[sink.nats] servers: give at least one, e.g. [\"nats://127.0.0.1:4222\"]".into());
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(format!("[sink.nats] replicas = {}: must be 1-5", self.replicas));
        }
        if !(1..=65536).contains(&self.window) {
            return Err(format!("[sink.nats] window = {}: must be 1-65536", self.window));
        }
        if !(1..=600_000).contains(&self.ack_timeout_ms) {
            return Err(format!(
                "[sink.nats] ack_timeout_ms = {}: must be 1-600000",
                self.ack_timeout_ms
            ));
        }
        if self.snapshot_interval_ms != 0 && self.snapshot_interval_ms < 60_000 {
            return Err(format!(
                "[sink.nats] snapshot_interval_ms = {}: 0 (on demand only) or at least 60000 (each is a full copy)",
                self.snapshot_interval_ms
            ));
        }
        if !(1..=100).contains(&self.snapshots_keep) {
            return Err(format!(
                "[sink.nats] snapshots_keep = {}: must be 1-100",
                self.snapshots_keep
            ));
        }
        if !(1000..=600_000).contains(&self.lease_ms) {
            return Err(format!(
                "[sink.nats] lease_ms = {}: must be 1000-600000",
                self.lease_ms
            ));
        }
        if self.failover == Failover::Auto && !self.ship_log {
            return Err("[sink.nats] failover = \"auto\": a standby takes over from the log stream, so set ship_log = true".into());
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./shardbox-data"),
            log_format: LogFormat::Text,
            engine: EngineConfig::default(),
            kv: KvConfig::default(),
            queue: QueueConfig::default(),
            events: EventsConfig::default(),
            cache: CacheConfig::default(),
            idempotency: IdempotencyConfig::default(),
            http: HttpConfig::default(),
            sink: SinkConfig::default(),
        }
    }
}

/// The storage engine: shards, the write-ahead log, checkpoints, writer queues, disk space.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineConfig {
    /// Number of shards, fixed when the data directory is created. Default 0: use the count in
    /// the MANIFEST, or one per CPU core (2..=16) for a new directory.
    pub shards: u32,
    /// `immediate` (default: a reply means the write's log record is on disk) or
    /// `periodic:<ms>` (a reply means the record is written to the OS; the log is synced every
    /// `<ms>`, so a machine crash loses at most that window; a killed process loses nothing).
    pub durability: DurabilityMode,
    /// redb page cache per shard. Default 32 MiB (8 shards = 256 MiB, fits a 1 GiB box).
    pub shard_cache_bytes: u64,
    /// Save redb's allocator state with every checkpoint so a crash needs no full file walk on
    /// restart. Costs a little at each checkpoint only (commits between checkpoints are not
    /// durable in redb, the log covers them). Default true.
    pub quick_repair: bool,
    /// A shard checkpoints (a durable redb commit) once the log it keeps from being recycled
    /// passes this many bytes. Bounds the log's disk use and the replay after a crash. Default
    /// 64 MiB.
    pub checkpoint_log_bytes: u64,
    /// A shard checkpoints once its oldest commit not yet checkpointed is this old. Default
    /// 30000 ms.
    pub checkpoint_interval_ms: u64,
    /// Size of one write-ahead log segment file (preallocated, recycled). Default 32 MiB.
    pub wal_segment_bytes: u64,
    /// Recycled log segments kept ready for reuse; more are deleted. Default 2.
    pub wal_spare_segments_max: usize,
    /// Operations one shard's writer queue holds before callers wait. Default 4096.
    pub writer_queue_ops_max: usize,
    /// How long a caller waits for room in a full writer queue before a 503. Default 1000 ms.
    pub writer_queue_wait_ms: u64,
    /// Most operations applied in one commit. Default 1024.
    pub batch_ops_max: usize,
    /// Most payload bytes applied in one commit. Default 8 MiB.
    pub batch_bytes_max: usize,
    /// `/readyz` fails when the data directory's filesystem has less free space. Default 256 MiB.
    pub disk_free_bytes_min: u64,
    /// Below this much free space, writes that add data get 507 `insufficient_storage`; deletes,
    /// acks, purges and trims still run. Default 64 MiB.
    pub disk_reserve_bytes: u64,
    /// Size of the ballast file (`<data>/ballast`) released when the disk is nearly full, so that
    /// deletes can commit; 0 for none. Keep it at least one `wal_segment_bytes`. Default 64 MiB.
    pub disk_ballast_bytes: u64,
    /// How often free disk space is sampled. Default 250 ms.
    pub disk_check_interval_ms: u64,
    /// Log bytes kept for the change feed's cursors and readers beyond what the shards need:
    /// past it the readers furthest behind are dropped to `resnapshot_required` (writes never
    /// wait for them). Default 256 MiB (scaled down on a small disk).
    pub feed_retain_bytes_max: u64,
    /// Named change-feed cursors. Default 64.
    pub feed_cursors_max: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            shards: 0,
            durability: DurabilityMode::Immediate,
            shard_cache_bytes: 32 << 20,
            quick_repair: true,
            checkpoint_log_bytes: 64 << 20,
            checkpoint_interval_ms: 30_000,
            wal_segment_bytes: 32 << 20,
            wal_spare_segments_max: 2,
            writer_queue_ops_max: 4096,
            writer_queue_wait_ms: 1000,
            batch_ops_max: 1024,
            batch_bytes_max: 8 << 20,
            disk_free_bytes_min: 256 << 20,
            disk_reserve_bytes: 64 << 20,
            disk_ballast_bytes: 64 << 20,
            disk_check_interval_ms: 250,
            feed_retain_bytes_max: 256 << 20,
            feed_cursors_max: 64,
        }
    }
}

/// The KV domain: value and batch bounds, listing, TTL sweeps, the read cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct KvConfig {
    /// Largest KV value. Default 16 MiB.
    pub value_bytes_max: usize,
    /// Keys in one `:batchGet` and ops in one `:batchWrite`. Default 1000.
    pub batch_keys_max: usize,
    /// Largest `limit` of a listing. Default 1000.
    pub list_limit_max: usize,
    /// Keys deleted per commit by a prefix delete and by the TTL sweeper. Default 1000.
    pub delete_batch_keys_max: usize,
    /// How often each shard's TTL sweeper runs. Default 1000 ms.
    pub sweep_interval_ms: u64,
    /// Memory for caching KV reads (0 = off). Default 64 MiB.
    pub kv_cache_bytes: u64,
}

impl Default for KvConfig {
    fn default() -> Self {
        Self {
            value_bytes_max: 16 << 20,
            batch_keys_max: 1000,
            list_limit_max: 1000,
            delete_batch_keys_max: 1000,
            sweep_interval_ms: 1000,
            kv_cache_bytes: 64 << 20,
        }
    }
}

/// The queue domain: job bounds, claims and leases, timers, schedules.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueConfig {
    /// Largest job payload (JSON). Default 256 KiB.
    pub job_bytes_max: usize,
    /// Jobs in one enqueue request (NDJSON batch). Default 10000.
    pub enqueue_batch_max: usize,
    /// Jobs one claim may take. Default 1000.
    pub claim_max: usize,
    /// Longest lease a claim or extend may ask for. Default 43200000 ms (12 h).
    pub lease_max_ms: u64,
    /// Longest long-poll `wait` of a claim. Default 60000 ms.
    pub claim_wait_max_ms: u64,
    /// Claims parked in a long poll at once; more answer empty at once. Default 4096.
    pub claim_waiters_max: usize,
    /// Longest the queue timer task sleeps between checks. Default 1000 ms.
    pub queue_tick_max_ms: u64,
    /// Cron schedules in all. Default 10000.
    pub schedules_max: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            job_bytes_max: 256 << 10,
            enqueue_batch_max: 10_000,
            claim_max: 1000,
            lease_max_ms: 43_200_000,
            claim_wait_max_ms: 60_000,
            claim_waiters_max: 4096,
            queue_tick_max_ms: 1000,
            schedules_max: 10_000,
        }
    }
}

/// The events domain: event bounds, ranges, buckets and retention.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EventsConfig {
    /// Largest event `data` (JSON). Default 1 MiB.
    pub event_bytes_max: usize,
    /// Events in one append (NDJSON). Default 10000.
    pub append_events_max: usize,
    /// Largest `limit` of an event range query. Default 10000.
    pub range_limit_max: usize,
    /// Appends further ahead of the server clock are rejected (400). Default 3600000 ms (1 h).
    pub future_skew_max_ms: u64,
    /// Bucket width of streams created on first append: 1h, 1d, 7d or 30d. Default 1d.
    pub default_bucket: BucketWidth,
    /// Retention of streams created on first append; 0 = forever. Default 30 days in ms.
    pub default_retention_ms: u64,
    /// How often retention runs. Default 60000 ms.
    pub retention_interval_ms: u64,
    /// Buckets dropped per commit by trims and retention. Default 16.
    pub trim_buckets_max: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            event_bytes_max: 1 << 20,
            append_events_max: 10_000,
            range_limit_max: 10_000,
            future_skew_max_ms: 3_600_000,
            default_bucket: BucketWidth(crate::base::util::BUCKET_WIDTHS[1].1),
            default_retention_ms: 30 * 86_400_000,
            retention_interval_ms: 60_000,
            trim_buckets_max: 16,
        }
    }
}

/// The cache domain: its memory and disk tiers, fills, waits, tags.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheConfig {
    /// Memory tier of the cache, in bytes (keys + values + entry metadata). Default 64 MiB.
    pub cache_memory_bytes: u64,
    /// Disk tier of the cache under `<data>/cache`, in bytes; 0 = memory only. Default 256 MiB.
    pub cache_disk_bytes: u64,
    /// Disk tier block size; an entry must fit in one block. Default 4 MiB.
    pub cache_disk_block_bytes: u64,
    /// Disk tier I/O: `psync` (pread/pwrite on blocking threads, default) or `uring` (io_uring).
    pub cache_disk_io: DiskIo,
    /// Largest cached value; larger PUTs get 413. Default 1 MiB.
    pub cache_value_bytes_max: usize,
    /// Memory-tier eviction: `s3fifo`, `lfu` (w-TinyLFU) or `lru`. Default `s3fifo`.
    pub cache_eviction: EvictionPolicy,
    /// TTL of a cache PUT without `ttl`; 0 = `ttl` is required. Default 0.
    pub cache_default_ttl_ms: u64,
    /// How long a fill lease stays valid. Default 10000 ms.
    pub cache_fill_lease_ms: u64,
    /// Outstanding fill leases in all; beyond it misses are answered without a lease. Default 65536.
    pub cache_fill_leases_max: usize,
    /// Longest `?wait=` of a cache GET. Default 10000 ms.
    pub cache_wait_max_ms: u64,
    /// GETs parked waiting for a fill at once; more answer at once. Default 4096.
    pub cache_waiters_max: usize,
    /// XFetch early-refresh strength; 0 turns early refresh off. Default 1.0.
    pub cache_xfetch_beta: f64,
    /// Tags per cache entry. Default 16.
    pub cache_tags_max: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            cache_memory_bytes: 64 << 20,
            cache_disk_bytes: 256 << 20,
            cache_disk_block_bytes: 4 << 20,
            cache_disk_io: DiskIo::Psync,
            cache_value_bytes_max: 1 << 20,
            cache_eviction: EvictionPolicy::S3Fifo,
            cache_default_ttl_ms: 0,
            cache_fill_lease_ms: 10_000,
            cache_fill_leases_max: 65_536,
            cache_wait_max_ms: 10_000,
            cache_waiters_max: 4096,
            cache_xfetch_beta: 1.0,
            cache_tags_max: 16,
        }
    }
}

/// Idempotency keys: how long a first response is kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct IdempotencyConfig {
    /// How long the first response to a request with an `Idempotency-Key` is kept and replayed
    /// to retries. Default 86400000 ms (24 h).
    pub idempotency_ttl_ms: u64,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            idempotency_ttl_ms: 86_400_000,
        }
    }
}

/// The HTTP server: the socket, connections, timeouts, bodies, tokens, TLS, rate limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpConfig {
    /// Listen address. Default `127.0.0.1:7070` (loopback only).
    pub listen: String,
    /// Async worker threads for HTTP; 0 (default) = one per CPU core.
    pub worker_threads: usize,
    /// Largest JSON request body (batch operations, incr). Default 32 MiB.
    pub json_body_bytes_max: usize,
    /// Request body bytes buffered across all connections at once; beyond it requests get 503.
    /// Default 256 MiB.
    pub inflight_body_bytes_max: usize,
    /// Open client connections. At the limit a new connection takes the place of the
    /// longest-idle keep-alive connection; with none idle it is answered 503. Default 1024.
    pub connections_max: usize,
    /// Open connections from one client IP address; beyond it the address's longest-idle
    /// connection makes room, or the new one gets 503. Default 512.
    pub connections_per_ip_max: usize,
    /// A keep-alive connection with no request for this long is closed (swept a few times per
    /// timeout), and so is one whose client takes none of an answer for this long. Default
    /// 5000 ms.
    pub idle_timeout_ms: u64,
    /// How far back the status page's rates and latencies reach (sampled 12 times per
    /// window). Default 60000 ms.
    pub status_window_ms: u64,
    /// A request head begun must be whole within this time (408). Default 10000 ms.
    pub header_read_timeout_ms: u64,
    /// Largest request head (request line + headers). Default 16384 bytes (min 8192).
    pub header_bytes_max: usize,
    /// A request body must arrive within this time. Default 30000 ms.
    pub body_read_timeout_ms: u64,
    /// On shutdown, in-flight requests get this long to finish. Default 10000 ms.
    pub shutdown_grace_ms: u64,
    /// Open SSE / long-poll followers in all. Default 1024.
    pub followers_max: usize,
    /// Bearer tokens (`[[tokens]]` tables; `shardbox token new` prints one). With none, every
    /// request is allowed, and the server refuses to listen beyond loopback unless
    /// `allow_unauthenticated` is set. Default none.
    pub tokens: Vec<crate::base::tokens::TokenConfig>,
    /// Serve without tokens on a non-loopback address. Default false.
    pub allow_unauthenticated: bool,
    /// Where to write one line per request: empty (default) for no access log, `-` for
    /// standard output, else a file (appended to, owner-only).
    pub access_log: String,
    /// `json` (default) or `common` (the Common Log Format plus request id and duration).
    pub access_log_format: AccessLogFormat,
    /// PEM certificate chain for TLS; with `tls_key`, the server speaks HTTPS only. Default
    /// none.
    pub tls_cert: PathBuf,
    /// PEM private key for TLS; must not be readable by other users. Default none.
    pub tls_key: PathBuf,
    /// Reads (GET/HEAD, `:batchGet`) per second per token (per client IP without tokens);
    /// 0 = unlimited. Default 0.
    pub rate_limit_reads_per_s: u64,
    /// Writes per second per token (per client IP without tokens); 0 = unlimited. Default 0.
    pub rate_limit_writes_per_s: u64,
    /// Requests a client may send at once above its rate (the bucket size); 0 = one second's
    /// worth. Default 0.
    pub rate_limit_burst: u64,
    /// Clients whose limiter state is kept; past it, new clients share one bucket until idle
    /// ones are forgotten. Default 65536.
    pub rate_limit_clients_max: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7070".to_string(),
            worker_threads: 0,
            json_body_bytes_max: 32 << 20,
            inflight_body_bytes_max: 256 << 20,
            connections_max: 1024,
            connections_per_ip_max: 512,
            idle_timeout_ms: 5_000,
            status_window_ms: 60_000,
            header_read_timeout_ms: 10_000,
            header_bytes_max: 16 << 10,
            body_read_timeout_ms: 30_000,
            shutdown_grace_ms: 10_000,
            followers_max: 1024,
            tokens: Vec::new(),
            allow_unauthenticated: false,
            access_log: String::new(),
            access_log_format: AccessLogFormat::Json,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            rate_limit_reads_per_s: 0,
            rate_limit_writes_per_s: 0,
            rate_limit_burst: 0,
            rate_limit_clients_max: 65_536,
        }
    }
}

/// `SHARDBOX_*` variables that are not settings: the config file's path, the log filter and
/// fault points, and the client commands' connection (`SHARDBOX_SERVER`, `SHARDBOX_TOKEN`,
/// `SHARDBOX_TOKEN_FILE`, `SHARDBOX_CA`), which a shell that runs both may well have set.
const CLI_VARIABLES: &[&str] = &[
    "config",
    "log",
    "failpoints",
    "server",
    "token",
    "token_file",
    "ca",
];

/// Environment variable prefix: `SHARDBOX_BATCH_OPS_MAX=64` sets `batch_ops_max`.
pub const ENV_PREFIX: &str = "SHARDBOX_";

/// Disk settings whose defaults are for a server with room to spare: on a smaller filesystem
/// each default is scaled to a share of it (a setting given explicitly, with another value,
/// is kept and checked instead). `(name, field, default, share of the filesystem as 1/n)`.
type DiskField = fn(&mut Config) -> &mut u64;
const DISK_DEFAULTS: &[(&str, DiskField, u64, u64)] = &[
    (
        "feed_retain_bytes_max",
        |c| &mut c.engine.feed_retain_bytes_max,
        256 << 20,
        8,
    ),
    (
        "wal_segment_bytes",
        |c| &mut c.engine.wal_segment_bytes,
        32 << 20,
        32,
    ),
    (
        "checkpoint_log_bytes",
        |c| &mut c.engine.checkpoint_log_bytes,
        64 << 20,
        16,
    ),
    (
        "disk_reserve_bytes",
        |c| &mut c.engine.disk_reserve_bytes,
        64 << 20,
        16,
    ),
    (
        "disk_ballast_bytes",
        |c| &mut c.engine.disk_ballast_bytes,
        64 << 20,
        16,
    ),
    (
        "disk_free_bytes_min",
        |c| &mut c.engine.disk_free_bytes_min,
        256 << 20,
        8,
    ),
    (
        "cache_disk_bytes",
        |c| &mut c.cache.cache_disk_bytes,
        256 << 20,
        8,
    ),
];

/// Total bytes of the filesystem that holds `path` (or would: its nearest existing ancestor).
pub fn filesystem_bytes(path: &std::path::Path) -> Option<u64> {
    let mut p = Some(path);
    while let Some(dir) = p {
        if let Ok(s) = rustix::fs::statvfs(dir) {
            return Some(s.f_blocks.saturating_mul(s.f_frsize));
        }
        p = dir.parent();
    }
    None
}

impl Config {
    /// Scales the disk settings left at their defaults to a filesystem of `fs_bytes` (see
    /// `DISK_DEFAULTS`), then refuses a configuration that could never take a write there.
    /// Returns what was scaled, `name = value`, for the start-up log.
    pub fn fit_to_disk(&mut self, fs_bytes: u64) -> Result<Vec<String>, String> {
        let mut scaled = Vec::new();
        let default_cache_disk = self.cache.cache_disk_bytes;
        for &(name, field_of, default, share) in DISK_DEFAULTS {
            let field = field_of(self);
            if *field != default || fs_bytes / share >= default {
                continue;
            }
            // Whole 64 KiB units (segments are preallocated in them), at least one.
            let v = (fs_bytes / share / (64 << 10)).max(1) * (64 << 10);
            *field = v;
            scaled.push(format!("{name} = {v}"));
        }
        if self.cache.cache_disk_bytes != default_cache_disk
            && self.cache.cache_disk_bytes < 4 * self.cache.cache_disk_block_bytes
        {
            // Scaled below 4 blocks: too small a disk for a disk tier, the cache stays in
            // memory.
            self.cache.cache_disk_bytes = 0;
            scaled.retain(|s| !s.starts_with("cache_disk_bytes"));
            scaled.push("cache_disk_bytes = 0".into());
        }
        if self.engine.disk_ballast_bytes > 0 && self.engine.disk_ballast_bytes < self.engine.wal_segment_bytes {
            self.engine.disk_ballast_bytes = self.engine.wal_segment_bytes;
        }
        // What must fit before the first write is taken: the reserve kept free, the ballast,
        // the log's segment and a spare, and the cache's disk tier.
        let needed = self
            .engine.disk_reserve_bytes
            .saturating_add(self.engine.disk_ballast_bytes)
            .saturating_add(self.engine.wal_segment_bytes.saturating_mul(2))
            .saturating_add(self.cache.cache_disk_bytes);
        if needed >= fs_bytes {
            return Err(format!(
                "the filesystem of {} holds {fs_bytes} bytes, and disk_reserve_bytes ({}) + disk_ballast_bytes ({}) + 2 x wal_segment_bytes ({}) + cache_disk_bytes ({}) = {needed} leave no room for any data: lower them (their defaults scale to the disk by themselves)",
                self.data_dir.display(),
                self.engine.disk_reserve_bytes,
                self.engine.disk_ballast_bytes,
                self.engine.wal_segment_bytes,
                self.cache.cache_disk_bytes,
            ));
        }
        Ok(scaled)
    }
}

impl Config {
    /// Builds a config from layers. `file` is the TOML text of `--config` (if any), `env` the
    /// process environment, and `overrides` the command-line values as `(field, value)` pairs,
    /// applied last.
    pub fn resolve(
        file: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<Self, String> {
        let mut table = toml::Table::try_from(Config::default())
            .map_err(|e| format!("internal: cannot serialise defaults: {e}"))?;
        if let Some(text) = file {
            let from_file: toml::Table =
                toml::from_str(text).map_err(|e| format!("config file: {e}"))?;
            for (k, v) in from_file {
                if !table.contains_key(&k) {
                    return Err(format!(
                        "config file: unknown setting `{k}`{}",
                        did_you_mean(&table, &k)
                    ));
                }
                table.insert(k, v);
            }
        }
        for (name, value) in env {
            let Some(field) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let field = field.to_ascii_lowercase();
            if CLI_VARIABLES.contains(&field.as_str()) {
                continue; // read by the CLI itself
            }
            if !table.contains_key(&field) {
                return Err(format!(
                    "environment: `{name}` is not a shardbox setting{}",
                    did_you_mean(&table, &field)
                ));
            }
            set_field(&mut table, &field, &value)
                .map_err(|e| format!("environment {name}: {e}"))?;
        }
        for (field, value) in overrides {
            set_field(&mut table, field, value)?;
        }
        let config: Config = table.clone().try_into().map_err(|e: toml::de::Error| {
            // The sections are flattened, so serde's message names no setting: find the one
            // that does not read by reading each alone over the defaults.
            let culprit = table.iter().find(|(k, v)| {
                let mut one = toml::Table::try_from(Config::default()).unwrap_or_default();
                one.insert((*k).clone(), (*v).clone());
                one.try_into::<Config>().is_err()
            });
            match culprit {
                Some((k, _)) => format!("config: `{k}`: {}", e.message()),
                None => format!("config: {}", e.message()),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges so the server never starts with a limit that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(n) = &self.sink.nats {
            n.validate()?;
        }
        let mut names = std::collections::BTreeSet::new();
        for t in &self.http.tokens {
            t.validate()?;
            if !names.insert(t.name.as_str()) {
                return Err(format!("token name `{}` is used twice", t.name));
            }
        }
        if self.http.tls_cert.as_os_str().is_empty() != self.http.tls_key.as_os_str().is_empty() {
            return Err("tls_cert and tls_key go together: give both for HTTPS, or neither".into());
        }
        if !(0.0..=100.0).contains(&self.cache.cache_xfetch_beta) {
            return Err(format!(
                "cache_xfetch_beta = {}: must be in 0..=100",
                self.cache.cache_xfetch_beta
            ));
        }
        if self.cache.cache_disk_bytes > 0
            && (self.cache.cache_value_bytes_max as u64) + (64 << 10) > self.cache.cache_disk_block_bytes
        {
            return Err(format!(
                "cache_value_bytes_max ({}) plus 64 KiB of entry overhead must fit in one disk block (cache_disk_block_bytes = {})",
                self.cache.cache_value_bytes_max, self.cache.cache_disk_block_bytes
            ));
        }
        if self.cache.cache_disk_bytes > 0 && self.cache.cache_disk_bytes < 4 * self.cache.cache_disk_block_bytes {
            return Err(format!(
                "cache_disk_bytes ({}) must hold at least 4 blocks of cache_disk_block_bytes ({}), or be 0 for memory only",
                self.cache.cache_disk_bytes, self.cache.cache_disk_block_bytes
            ));
        }
        let checks: [(&str, u64, u64, u64); 47] = [
            (
                "idempotency_ttl_ms",
                self.idempotency.idempotency_ttl_ms,
                1000,
                30 * 86_400_000,
            ),
            (
                "rate_limit_reads_per_s",
                self.http.rate_limit_reads_per_s,
                0,
                1 << 30,
            ),
            (
                "rate_limit_writes_per_s",
                self.http.rate_limit_writes_per_s,
                0,
                1 << 30,
            ),
            ("rate_limit_burst", self.http.rate_limit_burst, 0, 1 << 30),
            (
                "rate_limit_clients_max",
                self.http.rate_limit_clients_max as u64,
                1,
                1 << 24,
            ),
            (
                "checkpoint_log_bytes",
                self.engine.checkpoint_log_bytes,
                1 << 16,
                1 << 40,
            ),
            (
                "checkpoint_interval_ms",
                self.engine.checkpoint_interval_ms,
                10,
                86_400_000,
            ),
            (
                "wal_segment_bytes",
                self.engine.wal_segment_bytes,
                1 << 16,
                1 << 34,
            ),
            (
                "wal_spare_segments_max",
                self.engine.wal_spare_segments_max as u64,
                0,
                1024,
            ),
            (
                "cache_memory_bytes",
                self.cache.cache_memory_bytes,
                1 << 20,
                1 << 40,
            ),
            ("cache_disk_bytes", self.cache.cache_disk_bytes, 0, 1 << 44),
            (
                "cache_disk_block_bytes",
                self.cache.cache_disk_block_bytes,
                256 << 10,
                1 << 30,
            ),
            (
                "cache_value_bytes_max",
                self.cache.cache_value_bytes_max as u64,
                1,
                256 << 20,
            ),
            (
                "cache_fill_lease_ms",
                self.cache.cache_fill_lease_ms,
                10,
                3_600_000,
            ),
            (
                "cache_fill_leases_max",
                self.cache.cache_fill_leases_max as u64,
                1,
                1 << 24,
            ),
            (
                "cache_waiters_max",
                self.cache.cache_waiters_max as u64,
                1,
                1 << 20,
            ),
            ("cache_tags_max", self.cache.cache_tags_max as u64, 0, 1024),
            ("event_bytes_max", self.events.event_bytes_max as u64, 2, 1 << 30),
            (
                "append_events_max",
                self.events.append_events_max as u64,
                1,
                1_000_000,
            ),
            ("range_limit_max", self.events.range_limit_max as u64, 1, 1_000_000),
            (
                "retention_interval_ms",
                self.events.retention_interval_ms,
                100,
                86_400_000,
            ),
            ("trim_buckets_max", self.events.trim_buckets_max as u64, 1, 100_000),
            ("followers_max", self.http.followers_max as u64, 1, 1 << 20),
            ("job_bytes_max", self.queue.job_bytes_max as u64, 2, 1 << 30),
            (
                "enqueue_batch_max",
                self.queue.enqueue_batch_max as u64,
                1,
                1_000_000,
            ),
            ("claim_max", self.queue.claim_max as u64, 1, 100_000),
            ("lease_max_ms", self.queue.lease_max_ms, 1, 7 * 86_400_000),
            ("claim_wait_max_ms", self.queue.claim_wait_max_ms, 0, 3_600_000),
            ("queue_tick_max_ms", self.queue.queue_tick_max_ms, 1, 60_000),
            ("shards", self.engine.shards as u64, 0, 1024),
            (
                "writer_queue_ops_max",
                self.engine.writer_queue_ops_max as u64,
                1,
                1 << 20,
            ),
            ("batch_ops_max", self.engine.batch_ops_max as u64, 1, 1 << 20),
            ("batch_bytes_max", self.engine.batch_bytes_max as u64, 1, 1 << 31),
            ("value_bytes_max", self.kv.value_bytes_max as u64, 1, 1 << 30),
            (
                "json_body_bytes_max",
                self.http.json_body_bytes_max as u64,
                1024,
                1 << 31,
            ),
            ("batch_keys_max", self.kv.batch_keys_max as u64, 1, 100_000),
            ("list_limit_max", self.kv.list_limit_max as u64, 1, 100_000),
            (
                "delete_batch_keys_max",
                self.kv.delete_batch_keys_max as u64,
                1,
                1 << 20,
            ),
            ("connections_max", self.http.connections_max as u64, 1, 1 << 20),
            (
                "connections_per_ip_max",
                self.http.connections_per_ip_max as u64,
                1,
                1 << 20,
            ),
            ("idle_timeout_ms", self.http.idle_timeout_ms, 10, 3_600_000),
            ("status_window_ms", self.http.status_window_ms, 1000, 3_600_000),
            (
                "header_bytes_max",
                self.http.header_bytes_max as u64,
                8192,
                1 << 20,
            ),
            ("sweep_interval_ms", self.kv.sweep_interval_ms, 10, 3_600_000),
            (
                "disk_check_interval_ms",
                self.engine.disk_check_interval_ms,
                10,
                60_000,
            ),
            (
                "feed_retain_bytes_max",
                self.engine.feed_retain_bytes_max,
                0,
                1 << 44,
            ),
            (
                "feed_cursors_max",
                self.engine.feed_cursors_max as u64,
                0,
                4096,
            ),
        ];
        for (name, value, lo, hi) in checks {
            if value < lo || value > hi {
                return Err(format!("{name} = {value}: must be in {lo}..={hi}"));
            }
        }
        if self.http.inflight_body_bytes_max < self.kv.value_bytes_max
            || self.http.inflight_body_bytes_max < self.http.json_body_bytes_max
        {
            return Err(
                "inflight_body_bytes_max must be at least value_bytes_max and json_body_bytes_max"
                    .into(),
            );
        }
        self.http.listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| format!("listen `{}`: {e}", self.http.listen))?;
        Ok(())
    }

    /// Refuses to serve a non-loopback address with no tokens unless `allow_unauthenticated`
    /// says so: anyone on the network could read and delete everything.
    pub fn check_exposure(&self) -> Result<(), String> {
        let addr: std::net::SocketAddr = self
            .http.listen
            .parse()
            .map_err(|e| format!("listen `{}`: {e}", self.http.listen))?;
        if addr.ip().is_loopback() || !self.http.tokens.is_empty() || self.http.allow_unauthenticated {
            return Ok(());
        }
        Err(format!(
            "refusing to listen on {addr} without authentication: anyone who can reach it could \
             read and delete all data.\n  Add a token: run `shardbox token new --name NAME \
             --scopes read,write`, paste the [[tokens]] lines it prints into the config file \
             and pass --config FILE;\n  or, on a network you trust, pass \
             --allow-unauthenticated (or set allow_unauthenticated = true)."
        ))
    }

    /// A config for tests and embedding: defaults with the given data dir.
    pub fn with_data_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: dir.into(),
            ..Self::default()
        }
    }
}

impl Config {
    /// The setting nearest to `name` (at most 3 edits away): what a mistyped flag such as
    /// `--shard-cach-bytes` meant, for a hint to `--set`.
    pub fn nearest_setting(name: &str) -> Option<String> {
        let table = toml::Table::try_from(Config::default()).ok()?;
        nearest(&table, name).cloned()
    }
}

/// `; did you mean `x`?` for the setting nearest to `name` (at most 3 edits away), else "".
fn did_you_mean(table: &toml::Table, name: &str) -> String {
    match nearest(table, name) {
        Some(k) => format!("; did you mean `{k}`?"),
        None => String::new(),
    }
}

/// The setting of `table` nearest to `name`, at most 3 edits away.
fn nearest<'t>(table: &'t toml::Table, name: &str) -> Option<&'t String> {
    table
        .keys()
        .map(|k| (edit_distance(k, name), k))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, k)| k)
}

/// Levenshtein distance between two short names (bytes).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Sets one field from text, typed after the default's type.
fn set_field(table: &mut toml::Table, field: &str, text: &str) -> Result<(), String> {
    let current = table
        .get(field)
        .ok_or_else(|| format!("unknown setting `{field}`{}", did_you_mean(table, field)))?;
    let value = match current {
        toml::Value::Integer(_) => toml::Value::Integer(
            text.trim()
                .parse()
                .map_err(|_| format!("`{field}` needs a whole number, got `{text}`"))?,
        ),
        toml::Value::Float(_) => toml::Value::Float(
            text.trim()
                .parse()
                .map_err(|_| format!("`{field}` needs a number, got `{text}`"))?,
        ),
        // `SHARDBOX_TOKENS='[{name = "a", sha256 = "…", scopes = ["read"]}]'`
        toml::Value::Array(_) => format!("v = {text}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .ok_or_else(|| format!("`{field}` needs a TOML array, e.g. [{{...}}], got `{text}`"))?,
        toml::Value::Boolean(_) => toml::Value::Boolean(
            text.trim()
                .parse()
                .map_err(|_| format!("`{field}` needs true or false, got `{text}`"))?,
        ),
        _ => toml::Value::String(text.to_string()),
    };
    table.insert(field.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_setting_names_the_nearest_one() {
        let e = Config::resolve(Some("shard_cach_bytes = 1\n"), Vec::new(), &[]).unwrap_err();
        assert!(e.contains("did you mean `shard_cache_bytes`?"), "{e}");
        let env = vec![("SHARDBOX_CONECTIONS_MAX".to_string(), "5".to_string())];
        let e = Config::resolve(None, env, &[]).unwrap_err();
        assert!(e.contains("did you mean `connections_max`?"), "{e}");
        // Nothing near: no guess.
        let e = Config::resolve(Some("frobnicate_everything = 1\n"), Vec::new(), &[]).unwrap_err();
        assert!(!e.contains("did you mean"), "{e}");
    }

    #[test]
    fn precedence_is_flag_env_file_default() {
        let file = "shards = 4\nbatch_ops_max = 10\nvalue_bytes_max = 100\n";
        let env = vec![
            ("SHARDBOX_BATCH_OPS_MAX".to_string(), "20".to_string()),
            ("SHARDBOX_SHARDS".to_string(), "6".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
            // The client's connection, set in a shell that also starts the server: not settings.
            ("SHARDBOX_SERVER".to_string(), "http://127.0.0.1:7070".to_string()),
            ("SHARDBOX_TOKEN".to_string(), "sbx_x".to_string()),
            ("SHARDBOX_TOKEN_FILE".to_string(), "/tmp/t".to_string()),
            ("SHARDBOX_CA".to_string(), "/tmp/ca.pem".to_string()),
        ];
        let flags = vec![("shards".to_string(), "2".to_string())];
        let c = Config::resolve(Some(file), env, &flags).unwrap();
        assert_eq!(c.engine.shards, 2);
        assert_eq!(c.engine.batch_ops_max, 20);
        assert_eq!(c.kv.value_bytes_max, 100);
        assert_eq!(c.kv.list_limit_max, 1000);
    }

    #[test]
    fn unknown_and_bad_values_are_errors() {
        assert!(Config::resolve(Some("nope = 1"), vec![], &[]).is_err());
        let env = vec![("SHARDBOX_NOPE".to_string(), "1".to_string())];
        assert!(Config::resolve(None, env, &[]).is_err());
        let flags = vec![("shards".to_string(), "x".to_string())];
        assert!(Config::resolve(None, vec![], &flags).is_err());
        let flags = vec![("shards".to_string(), "5000".to_string())];
        assert!(Config::resolve(None, vec![], &flags).is_err());
        let flags = vec![("durability".to_string(), "sometimes".to_string())];
        assert!(Config::resolve(None, vec![], &flags).is_err());
    }

    #[test]
    fn durability_parses() {
        assert_eq!(
            DurabilityMode::parse("immediate").unwrap(),
            DurabilityMode::Immediate
        );
        assert_eq!(
            DurabilityMode::parse("periodic:50").unwrap(),
            DurabilityMode::Periodic {
                interval: Duration::from_millis(50)
            }
        );
        assert!(DurabilityMode::parse("periodic:0").is_err());
        assert!(DurabilityMode::parse("periodic:x").is_err());
    }
}
