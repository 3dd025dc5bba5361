//! The admin socket: the API on `<data>/admin.sock` with admin rights for whoever may open
//! the file (`shardbox backup` and `export` use it while a server runs).

use super::connection::serve_conn;
use super::ServerState;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The admin socket's path in a data directory.
pub fn admin_socket_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("admin.sock")
}

/// Connections served at once on the admin socket.
const ADMIN_CONNECTIONS_MAX: usize = 16;

/// Serves the API on `<data>/admin.sock` (mode 0600) with admin rights: whoever may open the
/// file may administer the server (`shardbox backup` uses it). `None` when it cannot bind
/// (path too long for a socket, read-only directory): a warning, not a failure.
pub(super) fn serve_admin_socket(state: Arc<ServerState>) -> Option<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::PermissionsExt;
    let path = admin_socket_path(&state.store.config().data_dir);
    // A socket left by a killed server: the store's LOCK says none runs now.
    let _ = std::fs::remove_file(&path);
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "no admin socket");
            return None;
        }
    };
    if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!(path = %path.display(), error = %e, "cannot restrict the admin socket");
        let _ = std::fs::remove_file(&path);
        return None;
    }
    // The server's own user: it owns the socket file it just made.
    let owner = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&path).map(|m| m.uid()).unwrap_or(0)
    };
    let limit = Arc::new(Semaphore::new(ADMIN_CONNECTIONS_MAX));
    Some(tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Only this user (or root): the file's mode is the check, and a connection queued
            // before the mode was set must not get admin rights.
            match stream.peer_cred() {
                Ok(c) if c.uid() == owner || c.uid() == 0 => {}
                _ => {
                    tracing::warn!("admin socket: a connection from another user refused");
                    continue;
                }
            }
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                tracing::warn!(
                    max = ADMIN_CONNECTIONS_MAX,
                    "admin socket: too many connections"
                );
                continue;
            };
            let Some((registered, _)) = state.conns.register(std::net::Ipv4Addr::LOCALHOST.into())
            else {
                continue;
            };
            let state = state.clone();
            // Its waits watch the client like any connection's (a Unix socket shows a hang-up
            // the same way).
            let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
            tokio::spawn(async move {
                // Idle timeout, eviction and shutdown as for any connection.
                serve_conn(stream, fd, &state, &registered, true).await;
                drop(registered);
                drop(permit);
            });
        }
    }))
}
