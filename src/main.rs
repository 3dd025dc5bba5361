//! The `shardbox` binary: parse the command line, build the config, run.

mod client;

use clap::{Args, Parser, Subcommand};
use shardbox::config::{Config, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "shardbox",
    version,
    about = "Sharded durable KV store and friends behind a small HTTP API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server.
    Serve(ServeArgs),
    /// Verify every shard and record checksum; exits non-zero on any damage.
    Check(CheckArgs),
    /// Copy every shard consistently into a new directory, while the server runs (through its
    /// admin socket) or not.
    Backup(BackupArgs),
    /// Verify a backup's checksums and restore it into a data directory; or, with
    /// --from-nats, rebuild a box from its newest snapshot and log on the NATS hub.
    Restore(RestoreArgs),
    /// Give the free space inside stopped shard files back to the filesystem.
    Compact(CompactArgs),
    /// Write every KV value, stream, event, queue, job and schedule as NDJSON (the portable
    /// format), from the running server (through its admin socket) or a stopped directory.
    Export(ExportArgs),
    /// Load an NDJSON export into a stopped data directory (created if absent), through the
    /// same checks as the HTTP API.
    Import(ImportArgs),
    /// Manage bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Client: get, put, delete, list and count keys on a running server.
    Kv(client::KvArgs),
    /// Client: enqueue, claim, ack and nack jobs; a queue's stats.
    Queue(client::QueueArgs),
    /// Client: append events, read a range, follow a stream.
    Events(client::EventsArgs),
    /// Client: get, put and purge cache entries.
    Cache(client::CacheArgs),
    /// Client: the running server's /v1/status.
    Status(client::StatusArgs),
    /// Run a read-only warm standby of the box its [sink.nats] names: rebuilt from the hub
    /// when the data directory is empty, then copying the primary's log as it comes.
    Follow(FollowArgs),
    /// Client: make the standby at --server the primary (it takes over the box's streams;
    /// the old primary is fenced).
    Promote(client::StatusArgs),
}

#[derive(Args)]
struct FollowArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// `/readyz` says ready while the standby is at most this far behind its primary (ms).
    #[arg(long, default_value_t = 10_000)]
    ready_lag_ms: u64,
}

#[derive(Args)]
struct BackupArgs {
    #[command(flatten)]
    common: Common,
    /// A new or empty directory for the backup.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct RestoreArgs {
    /// The backup directory (with SHA256SUMS).
    #[arg(
        long,
        required_unless_present = "from_nats",
        conflicts_with = "from_nats"
    )]
    from: Option<PathBuf>,
    /// Rebuild from the NATS hub named in --config's [sink.nats] (`ship_log = true` on the
    /// lost box): its newest whole snapshot, then its log records after it.
    #[arg(long, requires = "config")]
    from_nats: bool,
    /// The TOML config whose [sink.nats] names the hub and the box (--from-nats).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The data directory to restore into.
    #[arg(long)]
    data: PathBuf,
    /// Replace the data of a non-empty data directory.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct ExportArgs {
    #[command(flatten)]
    common: Common,
    /// The file to write (`-` for stdout); refuses an existing file.
    #[arg(long, default_value = "-")]
    out: PathBuf,
}

#[derive(Args)]
struct ImportArgs {
    #[command(flatten)]
    common: Common,
    /// The export file to read (a file: it is read twice, to verify and then to load).
    #[arg(long = "in")]
    input: PathBuf,
    /// Add to a data directory that already holds data (importing the same file twice adds
    /// its events and jobs twice).
    #[arg(long)]
    merge: bool,
}

#[derive(Args)]
struct CompactArgs {
    #[command(flatten)]
    common: Common,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a fresh token (shown once) and the [[tokens]] lines to paste into the config file.
    New(TokenNewArgs),
    /// Print the sha256 line for an existing token read from stdin.
    Hash,
}

#[derive(Args)]
struct TokenNewArgs {
    /// Name shown in logs and used as the rate-limit key.
    #[arg(long)]
    name: String,
    /// Comma-separated scopes: read, write, feed, admin.
    #[arg(long, default_value = "read,write", value_delimiter = ',')]
    scopes: Vec<String>,
}

#[derive(Args)]
struct Common {
    /// Data directory [default: ./shardbox-data] (`serve` creates it if absent; `check` needs an existing one)
    #[arg(long, env = "SHARDBOX_DATA_DIR")]
    data: Option<PathBuf>,
    /// TOML config file; flags and SHARDBOX_* variables override it.
    #[arg(long, env = "SHARDBOX_CONFIG")]
    config: Option<PathBuf>,
    /// Set any config field: --set batch_ops_max=256 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    /// Listen address [default: 127.0.0.1:7070]
    #[arg(long)]
    listen: Option<String>,
    /// Shard count for a new data directory [default: one per CPU core, 2-16; an existing directory keeps its own]
    #[arg(long)]
    shards: Option<u32>,
    /// `immediate` (reply after fsync) or `periodic:<ms>` [default: immediate]
    #[arg(long)]
    durability: Option<String>,
    /// `text` or `json` [default: text]
    #[arg(long)]
    log_format: Option<String>,
    /// Serve a non-loopback address without tokens (only on a network you trust).
    #[arg(long)]
    allow_unauthenticated: bool,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert (not readable by other users).
    #[arg(long)]
    tls_key: Option<PathBuf>,
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    common: Common,
    /// Also run redb's page-level integrity check (opens shards for writing; repairs the
    /// allocator state after an unclean shutdown).
    #[arg(long)]
    deep: bool,
}

fn main() -> ExitCode {
    // Everything this binary writes — data, log, cache, backups, exports, import staging — is
    // its users' data: owner-only whatever umask it was started with (operations.md). The
    // library makes its own files owner-only too (engine::private); this also covers what
    // redb and foyer create.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // A flag that is no flag but near a setting's name (`--shard-cach-bytes`): clap's
            // own tip points at the nearest flag; every setting is also `--set name=value`.
            let setting = (e.kind() == clap::error::ErrorKind::UnknownArgument)
                .then(|| e.get(clap::error::ContextKind::InvalidArg))
                .flatten()
                .and_then(|arg| {
                    let flag = arg.to_string();
                    let name = flag
                        .trim_start_matches('-')
                        .split('=')
                        .next()?
                        .replace('-', "_");
                    shardbox::Config::nearest_setting(&name)
                });
            let _ = e.print();
            if let Some(s) = setting {
                eprintln!("  tip: every setting is also `--set {s}=<value>` (did you mean `{s}`?)");
            }
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let result = match cli.command {
        Command::Serve(args) => serve(args, None),
        Command::Follow(args) => serve(args.serve, Some(args.ready_lag_ms)),
        Command::Promote(args) => return client::promote(args),
        Command::Check(args) => check(args),
        Command::Backup(args) => backup(args),
        Command::Restore(args) => restore(args),
        Command::Compact(args) => compact(args),
        Command::Export(args) => export(args),
        Command::Import(args) => import(args),
        Command::Token(TokenCommand::New(args)) => token_new(args),
        Command::Token(TokenCommand::Hash) => token_hash(),
        Command::Kv(args) => Ok(client::kv(args)),
        Command::Queue(args) => Ok(client::queue(args)),
        Command::Events(args) => Ok(client::events(args)),
        Command::Cache(args) => Ok(client::cache(args)),
        Command::Status(args) => Ok(client::status(args)),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("shardbox: {message}");
            ExitCode::from(2)
        }
    }
}

/// Resolves the config: flags > SHARDBOX_* env > file > defaults.
fn resolve(common: &Common, mut flags: Vec<(String, String)>) -> Result<Config, String> {
    let file = match &common.config {
        Some(p) => Some(
            std::fs::read_to_string(p).map_err(|e| format!("config file {}: {e}", p.display()))?,
        ),
        None => None,
    };
    if let Some(d) = &common.data {
        flags.push(("data_dir".into(), d.display().to_string()));
    }
    for s in &common.set {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| format!("--set {s}: expected KEY=VALUE"))?;
        flags.push((k.trim().to_string(), v.to_string()));
    }
    // The flags clap already read from the environment are handled as flags.
    let env = std::env::vars().filter(|(k, _)| k != "SHARDBOX_DATA_DIR" && k != "SHARDBOX_CONFIG");
    Config::resolve(file.as_deref(), env, &flags)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHARDBOX_LOG")
        // foyer logs its own start-up at info on every start: warnings and up only.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,foyer=warn,foyer_storage=warn")
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        // Colours only for a terminal: journald and log files get plain text.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

/// `serve`, or with `standby` (`follow`: its `ready_lag_ms`) a read-only standby.
fn serve(args: ServeArgs, standby: Option<u64>) -> Result<ExitCode, String> {
    let mut flags = Vec::new();
    if let Some(v) = args.listen {
        flags.push(("listen".into(), v));
    }
    if let Some(v) = args.shards {
        flags.push(("shards".into(), v.to_string()));
    }
    if let Some(v) = args.durability {
        flags.push(("durability".into(), v));
    }
    if let Some(v) = args.log_format {
        flags.push(("log_format".into(), v));
    }
    if args.allow_unauthenticated {
        flags.push(("allow_unauthenticated".into(), "true".into()));
    }
    if let Some(v) = args.tls_cert {
        flags.push(("tls_cert".into(), v.display().to_string()));
    }
    if let Some(v) = args.tls_key {
        flags.push(("tls_key".into(), v.display().to_string()));
    }
    let config = resolve(&args.common, flags)?;
    config.check_exposure()?;
    // A bad certificate or key is reported before anything is opened.
    let tls = shardbox::http::tls::acceptor(&config)?.is_some();
    init_logging(config.log_format);
    // Fault injection for crash tests (src/base/failpoint.rs): only in a build with the
    // `testing` feature, which `cargo test` builds; the shipped binary has no fault points.
    if let Ok(spec) = std::env::var("SHARDBOX_FAILPOINTS") {
        #[cfg(feature = "testing")]
        {
            shardbox::testing::failpoint::arm_from_spec(&spec)?;
            tracing::warn!(failpoints = %spec, "failpoints armed (testing only)");
        }
        #[cfg(not(feature = "testing"))]
        tracing::warn!(failpoints = %spec, "SHARDBOX_FAILPOINTS ignored: this build has no fault points (they need the `testing` feature)");
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.http.worker_threads > 0 {
        builder.worker_threads(config.http.worker_threads);
    }
    let runtime = builder
        .enable_all()
        .thread_name("shardbox-worker")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&config.http.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.http.listen))?;
        if standby.is_some() {
            prepare_standby(&config).await?;
        }
        let store = shardbox::Store::open(config.clone()).map_err(|e| e.to_string())?;
        if let Some(ready_lag_ms) = standby {
            store.follow(ready_lag_ms)?;
        }
        store
            .cache()
            .await
            .map_err(|e| format!("cannot open the cache: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        // Handlers first: a SIGTERM that comes right after "listening" or READY=1 must stop
        // the server cleanly, not kill it with the default action.
        let signals = Signals::install().map_err(|e| format!("cannot handle signals: {e}"))?;
        tracing::info!(
            address = %addr,
            data_dir = %config.data_dir.display(),
            shards = store.shard_count(),
            tls,
            tokens = config.http.tokens.len(),
            durability = %config.engine.durability,
            version = env!("CARGO_PKG_VERSION"),
            "shardbox listening"
        );
        // Under systemd (Type=notify): ready once every shard is open and the socket listens.
        // Without NOTIFY_SOCKET this does nothing.
        if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
            tracing::warn!(error = %e, "cannot report readiness to systemd");
        }
        shardbox::http::run(listener, store.clone(), async {
            signals.recv().await;
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        })
        .await
        .map_err(|e| e.to_string())?;
        store.close_cache().await;
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.close())
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!("shutdown complete");
        Ok(ExitCode::SUCCESS)
    })
}

/// A standby's data directory: when it holds nothing yet, rebuilt from the hub's newest
/// snapshot and the log after it, in the primary's generation (it goes on copying that
/// history).
async fn prepare_standby(config: &shardbox::Config) -> Result<(), String> {
    let nats = config.sink.nats.clone().ok_or_else(|| {
        "follow copies the box its [sink.nats] table names (--config): the config has none"
            .to_string()
    })?;
    if config.data_dir.join("MANIFEST").exists() {
        return Ok(());
    }
    let progress = shardbox::progress::Progress::for_stderr("follow: bytes downloaded");
    let restored = shardbox::snapshot::restore(
        &nats,
        &config.data_dir,
        (false, true),
        config.engine.wal_segment_bytes,
        &progress,
    )
    .await?;
    for s in &restored.skipped {
        eprintln!("follow: passed over snapshot {s}");
    }
    tracing::info!(
        primary = %nats.box_name,
        snapshot = %restored.snapshot,
        records = restored.records,
        last_lsn = restored.last_lsn,
        generation = %restored.generation,
        "standby rebuilt from the hub; copying the primary's log from here"
    );
    Ok(())
}

/// SIGTERM and SIGINT, handled from the moment they are installed.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The first of them to arrive.
    async fn recv(mut self) {
        tokio::select! {
            _ = self.int.recv() => tracing::info!("SIGINT received"),
            _ = self.term.recv() => tracing::info!("SIGTERM received"),
        }
    }
}

fn backup(args: BackupArgs) -> Result<ExitCode, String> {
    let config = resolve(&args.common, Vec::new())?;
    let out = std::path::absolute(&args.out).map_err(|e| format!("--out: {e}"))?;
    shardbox::backup::check_target(&out)?;
    let socket = shardbox::http::admin_socket_path(&config.data_dir);
    if socket.exists() {
        if let Some(reply) = backup_through_socket(&socket, &out)? {
            println!("{reply}");
            return Ok(ExitCode::SUCCESS);
        }
    }
    let store = open_existing(config)?;
    let progress = shardbox::progress::Progress::for_stderr("backup: shards");
    let report = shardbox::backup::backup(&store, &out, &progress);
    store.close();
    let report = report?;
    println!(
        "{}",
        serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
    );
    Ok(ExitCode::SUCCESS)
}

/// Asks the running server for a backup over its admin socket; `None` when no server answers
/// (a socket file left behind).
/// Opens an existing data directory no server runs on (replaying its log), for a command that
/// reads it: never creates one.
fn open_existing(config: Config) -> Result<shardbox::Store, String> {
    if !shardbox::backup::is_data_dir(&config.data_dir) {
        return Err(format!(
            "{} has no MANIFEST: not a shardbox data directory",
            config.data_dir.display()
        ));
    }
    shardbox::Store::open(config).map_err(|e| e.to_string())
}

fn backup_through_socket(
    socket: &std::path::Path,
    out: &std::path::Path,
) -> Result<Option<String>, String> {
    use http_body_util::BodyExt;
    let body = serde_json::json!({ "out": out }).to_string();
    with_admin_socket(
        socket,
        "POST",
        "/v1/admin/backup",
        body,
        |resp| async move {
            eprintln!("backup: the server is running; it takes the backup (online)");
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("admin socket: {e}"))?
                .to_bytes();
            let text = String::from_utf8_lossy(&body).into_owned();
            if !status.is_success() {
                return Err(format!("the server refused the backup ({status}): {text}"));
            }
            Ok(text)
        },
    )
}

/// Sends one request to the running server over its admin socket and hands the response to
/// `then`; `Ok(None)` when no server answers on the socket (a file left behind by a crash).
fn with_admin_socket<T, F, Fut>(
    socket: &std::path::Path,
    method: &str,
    path: &str,
    body: String,
    then: F,
) -> Result<Option<T>, String>
where
    F: FnOnce(hyper::Response<hyper::body::Incoming>) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    use http_body_util::Full;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let Ok(stream) = tokio::net::UnixStream::connect(socket).await else {
            return Ok(None);
        };
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("admin socket: {e}"))?;
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("admin socket: {e}"))?;
        then(resp).await.map(Some)
    })
}

fn restore(args: RestoreArgs) -> Result<ExitCode, String> {
    let Some(from) = &args.from else {
        let progress = shardbox::progress::Progress::for_stderr("restore: bytes downloaded");
        return restore_from_nats(args, &progress);
    };
    let progress = shardbox::progress::Progress::for_stderr("restore: bytes");
    let bytes = shardbox::backup::restore(from, &args.data, args.force, &progress)?;
    println!(
        "restored {bytes} bytes from {} into {} (checksums verified)",
        from.display(),
        args.data.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `restore --from-nats`: the newest usable snapshot and the log after it, then `check`.
fn restore_from_nats(
    args: RestoreArgs,
    progress: &shardbox::progress::Progress,
) -> Result<ExitCode, String> {
    let common = Common {
        data: Some(args.data.clone()),
        config: args.config.clone(),
        set: Vec::new(),
    };
    let config = resolve(&common, Vec::new())?;
    let nats = config.sink.nats.clone().ok_or_else(|| {
        "--from-nats reads the hub and the box from the [sink.nats] table of --config: it has none"
            .to_string()
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let restored = runtime.block_on(shardbox::snapshot::restore(
        &nats,
        &args.data,
        (args.force, false),
        config.engine.wal_segment_bytes,
        progress,
    ))?;
    for s in &restored.skipped {
        eprintln!("restore: passed over snapshot {s}");
    }
    println!(
        "restored box {} into {} from snapshot {} ({} bytes, checksums verified) and {} log records after it, up to LSN {}; the next start replays them (new generation)",
        nats.box_name,
        args.data.display(),
        restored.snapshot,
        restored.bytes,
        restored.records,
        restored.last_lsn
    );
    let report = shardbox::check::run_with(&args.data, false, false).map_err(|e| e.to_string())?;
    println!("{}", report.summary());
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn export(args: ExportArgs) -> Result<ExitCode, String> {
    use std::io::Write;
    let config = resolve(&args.common, Vec::new())?;
    let to_stdout = args.out.as_os_str() == "-";
    // A new file only: an export is never written over something.
    let mut out: Box<dyn Write> = if to_stdout {
        Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
    } else {
        let f = shardbox::backup::file_options()
            .write(true)
            .create_new(true)
            .open(&args.out)
            .map_err(|e| format!("--out {}: {e}", args.out.display()))?;
        Box::new(std::io::BufWriter::new(f))
    };
    let done = |what: &str| {
        if !to_stdout {
            eprintln!("export: {what} written to {}", args.out.display());
        }
    };
    let socket = shardbox::http::admin_socket_path(&config.data_dir);
    if socket.exists() && export_through_socket(&socket, &mut out)? {
        out.flush()
            .map_err(|e| format!("writing the export: {e}"))?;
        done("the running server's records");
        return Ok(ExitCode::SUCCESS);
    }
    let store = open_existing(config)?;
    let progress = shardbox::progress::Progress::for_stderr("export: records");
    let counts = shardbox::export::export(&store, &mut out, &progress);
    store.close();
    let counts = counts?;
    out.flush()
        .map_err(|e| format!("writing the export: {e}"))?;
    eprintln!(
        "export: {}",
        serde_json::to_string(&counts).map_err(|e| e.to_string())?
    );
    done("every record");
    Ok(ExitCode::SUCCESS)
}

/// Streams `GET /v1/admin/export` from the running server into `out`; false when no server
/// answers on the socket (a file left behind).
fn export_through_socket(
    socket: &std::path::Path,
    out: &mut dyn std::io::Write,
) -> Result<bool, String> {
    use http_body_util::BodyExt;
    let done = with_admin_socket(
        socket,
        "GET",
        "/v1/admin/export",
        String::new(),
        |resp| async move {
            eprintln!("export: the server is running; exporting through it (online)");
            let status = resp.status();
            let mut body = resp.into_body();
            if !status.is_success() {
                let text = body
                    .collect()
                    .await
                    .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                    .unwrap_or_default();
                return Err(format!("the server refused the export ({status}): {text}"));
            }
            let progress = shardbox::progress::Progress::for_stderr("export: bytes");
            let mut end = shardbox::export::EndCheck::default();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| format!("admin socket: {e}"))?;
                if let Ok(data) = frame.into_data() {
                    out.write_all(&data)
                        .map_err(|e| format!("writing the export: {e}"))?;
                    progress.inc(data.len() as u64);
                    end.feed(&data);
                }
            }
            progress.finish();
            end.finish()
                .map_err(|e| format!("{e} (see the server log)"))
        },
    )?;
    Ok(done.is_some())
}

fn import(args: ImportArgs) -> Result<ExitCode, String> {
    let config = resolve(&args.common, Vec::new())?;
    if !std::fs::metadata(&args.input).is_ok_and(|m| m.is_file()) {
        return Err(format!(
            "--in {}: give a file (import reads it twice: once to verify it, once to load it)",
            args.input.display()
        ));
    }
    let data = config.data_dir.clone();
    let staging = shardbox::backup::import_staging_dir(&data);
    // An import killed while it replaced the data: finish that one first.
    if shardbox::backup::is_staged(&staging) {
        shardbox::backup::finish_staged(&data, &staging)?;
        eprintln!(
            "import: an earlier import was stopped while it replaced the data; it was finished (run `shardbox check`, then import anything else)"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let has_data = std::fs::read_dir(&data)
        .map(|d| {
            d.filter_map(Result::ok).any(|e| {
                !["import.tmp", "import.done", "LOCK"]
                    .contains(&e.file_name().to_str().unwrap_or(""))
            })
        })
        .unwrap_or(false);
    if has_data && !args.merge {
        return Err(format!(
            "{} is not empty: import into a new directory, or pass --merge to add to it",
            config.data_dir.display()
        ));
    }
    let open = || {
        std::fs::File::open(&args.input)
            .map(std::io::BufReader::new)
            .map_err(|e| format!("--in {}: {e}", args.input.display()))
    };
    let records = shardbox::export::verify(&mut open()?)
        .map_err(|e| format!("{}: {e}", args.input.display()))?;
    // All or nothing across a crash: the import builds the new state in <data>/import.tmp
    // (a copy of the data when merging), marks it complete, then puts it in place at once. A
    // killed import leaves the data as it was, and a server refuses the directory until the
    // staging copy is removed or the import is run again.
    let staged = (|| {
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| format!("{}: {e}", staging.display()))?;
        }
        shardbox::backup::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        if has_data {
            // Opened and closed first: the log's last records are checkpointed into the shards.
            let existing = shardbox::Store::open(config.clone()).map_err(|e| e.to_string())?;
            existing.close();
            drop(existing);
            shardbox::backup::copy_stopped(&data, &staging)?;
        }
        let mut staged_config = config.clone();
        staged_config.data_dir = staging.clone();
        let store = shardbox::Store::open(staged_config).map_err(|e| e.to_string())?;
        let progress = shardbox::progress::Progress::for_stderr("import: records");
        progress.set_total(records + 2);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let counts = rt.block_on(shardbox::export::import(&store, &mut open()?, &progress));
        store.close();
        drop(store);
        let counts = counts.map_err(|e| format!("{}: {e}", args.input.display()))?;
        shardbox::backup::mark_staged(&staging, &args.input.display().to_string())?;
        Ok::<_, String>(counts)
    })();
    let counts = match staged {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    shardbox::backup::finish_staged(&data, &staging)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&counts).map_err(|e| e.to_string())?
    );
    Ok(ExitCode::SUCCESS)
}

fn compact(args: CompactArgs) -> Result<ExitCode, String> {
    let config = resolve(&args.common, Vec::new())?;
    let progress = shardbox::progress::Progress::for_stderr("compact: shards");
    let (before, after) = shardbox::backup::compact(&config.data_dir, &progress)?;
    println!(
        "compacted {}: {before} -> {after} bytes ({} freed)",
        config.data_dir.display(),
        before.saturating_sub(after)
    );
    Ok(ExitCode::SUCCESS)
}

fn token_new(args: TokenNewArgs) -> Result<ExitCode, String> {
    use shardbox::tokens::{Scope, TokenConfig};
    let scopes = args
        .scopes
        .iter()
        .map(|s| match s.trim() {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            "feed" => Ok(Scope::Feed),
            other => Err(format!(
                "--scopes: `{other}` is not one of read, write, feed, admin"
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let token = shardbox::tokens::new_token();
    let entry = TokenConfig {
        name: args.name.clone(),
        sha256: shardbox::tokens::hash_token(&token),
        scopes: scopes.clone(),
        namespaces: None,
        streams: None,
        queues: None,
    };
    entry.validate()?;
    eprintln!(
        "The token (shown only now; give it to the client as `Authorization: Bearer <token>`):"
    );
    println!("{token}");
    eprintln!("\nPaste into the config file (it holds only the hash):\n");
    eprintln!(
        "{}",
        shardbox::tokens::config_snippet(&token, &args.name, &scopes)
    );
    Ok(ExitCode::SUCCESS)
}

fn token_hash() -> Result<ExitCode, String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("reading the token from stdin: {e}"))?;
    let token = line.trim();
    if token.is_empty() {
        return Err("no token on stdin".into());
    }
    println!("sha256 = \"{}\"", shardbox::tokens::hash_token(token));
    Ok(ExitCode::SUCCESS)
}

fn check(args: CheckArgs) -> Result<ExitCode, String> {
    let config = resolve(&args.common, Vec::new())?;
    let report = shardbox::check::run_with(
        &config.data_dir,
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        args.deep,
    )
    .map_err(|e| e.to_string())?;
    println!("{}", report.summary());
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
