//! Admin routes (scope `admin`; open on the data directory's `admin.sock` to whoever may
//! open that file): online backup and export.

use super::body::ReqBody;
use super::input::json_body;
use super::response::{self, Resp};
use super::route_table::{route, RouteDef};
use super::ServerState;
use crate::http::error::ApiError;
use hyper::Request;
use serde::Deserialize;
use std::path::PathBuf;

pub(super) const ROUTES: &[RouteDef] = &[
    route!(unlogged "POST", "/v1/admin/backup", [], |s, p, r| backup(&s, r)
        .await),
    route!("GET", "/v1/admin/export", [], |s, p, r| export(&s).await),
    route!(unlogged "POST", "/v1/admin/snapshot", [], |s, p, r| snapshot(&s)
        .await),
    route!(unlogged "POST", "/v1/admin/promote", [], |s, p, r| promote(&s)
        .await),
];

/// Makes this standby the primary (`shardbox promote`): once it holds everything its
/// primary's log stream holds, it takes the stream over (`store::follow`).
async fn promote(state: &ServerState) -> Result<Resp, ApiError> {
    let Some(standby) = state.store.standby().cloned() else {
        return Err(ApiError::new(
            409,
            "not_standby",
            "this box is not a standby (`shardbox follow`): there is nothing to promote",
        ));
    };
    // In its own task: a client that hangs up does not stop a promotion halfway.
    let store = state.store.clone();
    let promoted = tokio::spawn(async move { standby.promote(&store).await })
        .await
        .map_err(|e| ApiError::task_failed("the promotion task", e))?
        .map_err(|(status, code, message)| {
            let mut e = ApiError::new(status, code, message);
            if status == 503 {
                e.retry_after_s = Some(5);
            }
            e
        })?;
    Ok(response::json_of(200, &promoted))
}

/// Takes a snapshot to the NATS hub now (`[sink.nats] ship_log = true`): 200 with what it
/// holds ([`crate::store::snapshot`]).
async fn snapshot(state: &ServerState) -> Result<Resp, ApiError> {
    let Some(cfg) = state
        .store
        .config()
        .sink
        .nats
        .clone()
        .filter(|c| c.ship_log)
    else {
        return Err(ApiError::new(
            409,
            "snapshots_off",
            "snapshots go to the NATS hub: set [sink.nats] ship_log = true",
        ));
    };
    if let Some((code, why)) = state.store.engine().read_only() {
        return Err(ApiError::new(
            409,
            code,
            format!("snapshots are the primary's: {why}"),
        ));
    }
    let running = one_at_a_time(
        &crate::store::snapshot::RUNNING,
        "snapshot_running",
        "a snapshot",
    )?;
    // The guard goes with the snapshot: a client that hangs up does not free the slot (or
    // leave the staged copy behind) while it still runs.
    let store = state.store.clone();
    let snap = tokio::spawn(async move {
        let _running = running;
        crate::store::snapshot::take_of(&store, &cfg).await
    })
    .await
    .map_err(|e| ApiError::task_failed("the snapshot task", e))?
    .map_err(|e| {
        let mut e = ApiError::new(
            503,
            "hub_unavailable",
            format!("the snapshot did not reach the NATS hub: {e}"),
        );
        e.retry_after_s = Some(5);
        e
    })?;
    Ok(response::json_of(200, &snap))
}

/// One export at a time per process (each holds read transactions open while it streams).
static EXPORTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Streams every record as NDJSON ([`crate::store::export`]), read from read transactions while the
/// server runs. A slow reader slows the export (the channel is bounded); one that hangs up
/// stops it. A failure midway ends the body without the `end` line, which import refuses.
async fn export(state: &ServerState) -> Result<Resp, ApiError> {
    let running = one_at_a_time(&EXPORTING, "export_running", "an export")?;
    let (resp, tx) = response::channel(200, "application/x-ndjson", 16);
    let store = state.store.clone();
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _running = running;
        let mut w = ChannelWriter {
            tx,
            runtime,
            buf: Vec::new(),
        };
        match crate::store::export::export(
            &store,
            &mut w,
            &crate::base::progress::Progress::quiet(),
        ) {
            Ok(n) => tracing::info!(kv = n.kv, events = n.events, jobs = n.jobs, "export done"),
            Err(e) => tracing::warn!(error = %e, "export stopped"),
        }
    });
    Ok(resp)
}

/// The guard of a job that runs one at a time, or 409 `code` with `Retry-After` while `what`
/// runs.
fn one_at_a_time(
    lock: &'static tokio::sync::Mutex<()>,
    code: &'static str,
    what: &str,
) -> Result<tokio::sync::MutexGuard<'static, ()>, ApiError> {
    lock.try_lock().map_err(|_| {
        let mut e = ApiError::new(
            409,
            code,
            format!("{what} is already running; retry when it is done"),
        );
        e.retry_after_s = Some(5);
        e
    })
}

/// A reader that takes nothing for this long ends its export (which holds read transactions,
/// the export slot and a thread while it waits).
const EXPORT_STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// Writes into a streamed response in 64 KiB chunks, waiting while the client is behind (at
/// most [`EXPORT_STALL`]).
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
    runtime: tokio::runtime::Handle,
    buf: Vec<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= 64 << 10 {
            self.flush()?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = bytes::Bytes::from(std::mem::take(&mut self.buf));
        match self
            .runtime
            .block_on(tokio::time::timeout(EXPORT_STALL, self.tx.send(chunk)))
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the client went away",
            )),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client read nothing for 60 s",
            )),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupReq {
    /// Absolute path of a new or empty directory on the server's host.
    out: String,
}

/// One backup at a time per process.
static RUNNING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn backup(state: &ServerState, req: Request<ReqBody>) -> Result<Resp, ApiError> {
    use crate::store::backup::TargetError;
    let r: BackupReq = json_body(state, req).await?;
    let out = PathBuf::from(&r.out);
    if !out.is_absolute() {
        return Err(ApiError::bad_request(format!(
            "out `{}`: give an absolute path on the server's host",
            r.out
        )));
    }
    crate::store::backup::refuse_inside(&state.store.config().data_dir, &out)
        .map_err(ApiError::bad_request)?;
    // Not empty: 409 (nothing touched). Not a directory, or not readable: the request's fault.
    crate::store::backup::check_target(&out).map_err(|e| match e {
        TargetError::NotEmpty(m) => ApiError::new(409, "conflict", m),
        TargetError::Unusable(m) => ApiError::bad_request(format!(
            "{m}: give a new or empty directory the server's user may write"
        )),
    })?;
    let running = one_at_a_time(&RUNNING, "backup_running", "a backup")?;
    // A directory the server cannot make or write is the request's fault too: 400 before the
    // copy (whose own I/O errors stay 500).
    crate::store::backup::create_dir_all(&out)
        .and_then(|()| {
            use rustix::fs::{access, Access};
            access(&out, Access::WRITE_OK | Access::EXEC_OK).map_err(std::io::Error::from)
        })
        .map_err(|e| {
            ApiError::bad_request(format!(
                "out `{}`: cannot create it or write in it ({e}): give a directory the server's user may write",
                r.out
            ))
        })?;
    let store = state.store.clone();
    tracing::info!(out = %out.display(), "backup started");
    // The guard goes with the copy: a client that hangs up does not free the slot while the
    // copy still runs.
    let report = tokio::task::spawn_blocking(move || {
        let _running = running;
        crate::store::backup::backup(&store, &out, &crate::base::progress::Progress::quiet())
    })
    .await
    .map_err(|e| ApiError::task_failed("the backup task", e))?
    .map_err(|e| {
        tracing::warn!(error = %e, "backup failed");
        ApiError::new(500, "backup_failed", e)
    })?;
    tracing::info!(
        out = %report.out.display(),
        bytes = report.bytes,
        rows = report.rows,
        elapsed_ms = report.elapsed_ms,
        "backup done"
    );
    Ok(response::json_of(200, &report))
}
