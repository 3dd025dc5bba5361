//! The `shardbox` binary: parse the command line, build the config, run.

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
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Check(args) => check(args),
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
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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

fn serve(args: ServeArgs) -> Result<ExitCode, String> {
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
    let config = resolve(&args.common, flags)?;
    init_logging(config.log_format);
    // Fault injection for crash tests (see src/failpoint.rs); unset in normal use.
    if let Ok(spec) = std::env::var("SHARDBOX_FAILPOINTS") {
        shardbox::failpoint::arm_from_spec(&spec)?;
        tracing::warn!(failpoints = %spec, "failpoints armed (testing only)");
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        builder.worker_threads(config.worker_threads);
    }
    let runtime = builder
        .enable_all()
        .thread_name("shardbox-worker")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let store = shardbox::Store::open(config.clone()).map_err(|e| e.to_string())?;
        store
            .cache()
            .await
            .map_err(|e| format!("cannot open the cache: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(
            address = %addr,
            data_dir = %config.data_dir.display(),
            shards = store.engine().shards().len(),
            durability = %config.durability,
            version = env!("CARGO_PKG_VERSION"),
            "shardbox listening"
        );
        shardbox::http::run(listener, store.clone(), shutdown_signal())
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

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
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
