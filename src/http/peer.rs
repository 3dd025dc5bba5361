//! Whether a request's client is still there.
//!
//! hyper serves connections with `half_close`, so it does not read a socket while a request is
//! being handled: a client that hangs up during a long-poll or a follow is noticed only when a
//! write to it fails — for an SSE follower at its next heartbeat, for a long-poll claim never
//! (it would take a job for nobody). Requests that wait watch their connection's socket
//! instead: [`Watch`] is a duplicate of the socket's descriptor, registered for readiness, which
//! sees the client's FIN or RST the moment it arrives, without reading what hyper would read.
//!
//! A FIN alone may be a client that only closed its sending side and still reads (`nc -N`):
//! a long-poll answers it at once with what there is; a follower sends it a heartbeat and goes
//! on streaming unless the connection is then reset (a client that closed entirely answers
//! the heartbeat with an RST).

use std::future::Future;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::RwLock;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The descriptor of a connection's socket while the connection holds it open.
#[derive(Default)]
pub struct SocketFd(RwLock<Option<RawFd>>);

impl SocketFd {
    pub fn set(&self, fd: Option<RawFd>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = fd;
    }

    /// Called by the connection's stream as it is dropped, before its descriptor is closed: no
    /// [`Watch`] can duplicate the number after this (it may be another file by then).
    pub fn closing(&self) {
        self.set(None);
    }

    /// Whether bytes of a request have arrived that hyper has not read yet: a connection found
    /// idle with these is not closed (after a stall — a stopped process, a swapped-out box —
    /// the idle timer can fire before hyper reads what came in meanwhile, and closing then
    /// would drop a request the client already sent).
    pub fn has_pending_input(&self) -> bool {
        let g = self.0.read().unwrap_or_else(|p| p.into_inner());
        let Some(fd) = *g else { return false };
        // SAFETY: as in `duplicate`: the descriptor stays open while the read lock is held.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        use rustix::net::RecvFlags;
        matches!(
            rustix::net::recv(borrowed, &mut [0u8; 1], RecvFlags::PEEK | RecvFlags::DONTWAIT),
            Ok((n, _)) if n > 0
        )
    }

    /// A duplicate of the socket, or `None` when the connection has none (a pipe, a Unix
    /// socket) or is closing.
    fn duplicate(&self) -> Option<OwnedFd> {
        let g = self.0.read().unwrap_or_else(|p| p.into_inner());
        let fd = (*g)?;
        // SAFETY: `fd` is the open socket of a live connection: its stream clears this slot
        // (taking the write lock) before it closes the descriptor, and the read lock held here
        // keeps it from doing so until the duplicate exists.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        rustix::io::fcntl_dupfd_cloexec(borrowed, 0).ok()
    }
}

/// A request's view of its client's socket (see the module docs).
pub struct Watch {
    fd: AsyncFd<OwnedFd>,
}

impl Watch {
    /// Watches the connection's socket; `None` when it has none.
    pub fn of(socket: &SocketFd) -> Option<Watch> {
        let fd = socket.duplicate()?;
        // SAFETY: an `OwnedFd` owns its open descriptor until it is dropped with the `AsyncFd`.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok()?;
        Some(Watch { fd })
    }

    /// What is on the socket now, without consuming it: `Some(true)` when the client closed
    /// its side or reset the connection, `Some(false)` when it is open (with or without
    /// pipelined bytes waiting), `None` when it cannot tell yet.
    fn peek(&self) -> Option<bool> {
        use rustix::net::RecvFlags;
        let mut b = [0u8; 1];
        match rustix::net::recv(
            self.fd.as_fd(),
            &mut b,
            RecvFlags::PEEK | RecvFlags::DONTWAIT,
        ) {
            Ok((0, _)) => Some(true),
            Ok(_) => Some(false),
            Err(rustix::io::Errno::AGAIN) => Some(false),
            Err(rustix::io::Errno::INTR) => None,
            Err(_) => Some(true),
        }
    }

    /// Whether the client has closed its side (FIN) or reset the connection.
    pub fn closed_now(&self) -> bool {
        self.peek() == Some(true)
    }

    /// Ends when the client closes its side or resets the connection.
    pub async fn closed(&self) {
        loop {
            let Ok(mut guard) = self.fd.ready(Interest::READABLE).await else {
                return std::future::pending().await;
            };
            if guard.ready().is_read_closed() || self.closed_now() {
                return;
            }
            // Pipelined bytes of the next request: hyper reads them later. Wait for the next
            // edge (a FIN or an RST after them).
            guard.clear_ready();
        }
    }

    /// Whether the connection was reset: the client is gone, not merely half-closed.
    pub fn reset(&self) -> bool {
        matches!(
            rustix::net::sockopt::socket_error(self.fd.as_fd()),
            Ok(Err(_))
        ) || matches!(
            rustix::net::recv(
                self.fd.as_fd(),
                &mut [0u8; 1],
                rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT
            ),
            Err(e) if e != rustix::io::Errno::AGAIN && e != rustix::io::Errno::INTR
        )
    }

    /// After the client's FIN and a write to it: waits (up to `within`) for the reset a client
    /// that closed entirely answers with. True when it came: the client is gone.
    pub async fn reset_within(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self.reset() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.reset()
    }
}

impl crate::engine::departure::Presence for Watch {
    fn gone(&self) -> bool {
        self.closed_now()
    }

    fn left(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.closed())
    }
}

/// Runs `f` until it ends or the client closes its side: `None` when the client went first
/// (`f` is dropped: it must be a wait that has taken nothing yet).
pub async fn unless_closed<F: Future>(watch: Option<&Watch>, f: F) -> Option<F::Output> {
    let Some(w) = watch else {
        return Some(f.await);
    };
    tokio::select! {
        out = f => Some(out),
        _ = w.closed() => None,
    }
}
