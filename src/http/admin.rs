//! Admin routes (scope `admin`; open on the data directory's `admin.sock` to whoever may
//! open that file): online backup.

use super::body::ReqBody;
use super::input::json_body;
use super::response::{self, Resp};
use super::routes::{route, RouteDef};
use super::ServerState;
use crate::error::ApiError;
use hyper::Request;
use serde::Deserialize;
use std::path::PathBuf;

pub(super) const ROUTES: &[RouteDef] = &[route!("POST", "/v1/admin/backup", [], |s, p, r| backup(
    &s, r
)
.await)];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupReq {
    /// Absolute path of a new or empty directory on the server's host.
    out: String,
}

/// One backup at a time per process.
static RUNNING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn backup(state: &ServerState, req: Request<ReqBody>) -> Result<Resp, ApiError> {
    let r: BackupReq = json_body(state, req).await?;
    let out = PathBuf::from(&r.out);
    if !out.is_absolute() {
        return Err(ApiError::bad_request(format!(
            "out `{}`: give an absolute path on the server's host",
            r.out
        )));
    }
    let data = state.store.config().data_dir.clone();
    let data = std::fs::canonicalize(&data).unwrap_or(data);
    if out.starts_with(&data) {
        return Err(ApiError::bad_request(format!(
            "out `{}` is inside the data directory {}: back up somewhere else",
            r.out,
            data.display()
        )));
    }
    crate::backup::check_target(&out).map_err(|e| ApiError::new(409, "conflict", e))?;
    let Ok(running) = RUNNING.try_lock() else {
        let mut e = ApiError::new(
            409,
            "backup_running",
            "a backup is already running; retry when it is done",
        );
        e.retry_after_s = Some(5);
        return Err(e);
    };
    let engine = state.store.engine().clone();
    tracing::info!(out = %out.display(), "backup started");
    // The guard goes with the copy: a client that hangs up does not free the slot while the
    // copy still runs.
    let report = tokio::task::spawn_blocking(move || {
        let _running = running;
        crate::backup::backup(&engine, &out, &crate::progress::Progress::quiet())
    })
    .await
    .map_err(|e| ApiError::new(500, "internal", format!("backup task: {e}")))?
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
