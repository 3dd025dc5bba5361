//! Whether a request's client is still there, and the places of requests that wait.
//!
//! A connection does not read its socket while a request is being handled (the next request's
//! bytes wait there, and a client that half-closes after its request still gets its answer):
//! a client that hangs up during a long-poll or a follow would be noticed only when a write to
//! it fails — for an SSE follower at its next heartbeat, for a long-poll claim never (it would
//! take a job for nobody). Requests that wait watch their connection's socket instead:
//! [`Watch`] is a duplicate of the socket's descriptor, registered for readiness, which sees the
//! client's FIN or RST the moment it arrives, without reading what the connection will read.
//!
//! A FIN alone may be a client that only closed its sending side and still reads (`nc -N`):
//! a long-poll answers it at once with what there is; a follower sends it a heartbeat and goes
//! on streaming unless the connection is then reset (a client that closed entirely answers
//! the heartbeat with an RST).
//!
//! Every request that waits holds a [`Waiting`]: one of `long_polls_max` places (so waiters
//! never hold every connection) and the watch on its client.

use std::future::Future;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::OwnedSemaphorePermit;

/// What one non-blocking peek of a socket saw.
#[derive(PartialEq, Eq)]
enum Peeked {
    /// Bytes wait to be read.
    Data,
    /// Nothing yet (or interrupted).
    Nothing,
    /// The peer closed its side.
    Eof,
    /// The connection failed (reset).
    Failed,
}

/// Peeks one byte of `fd` without consuming it or blocking.
fn peek(fd: BorrowedFd<'_>) -> Peeked {
    use rustix::net::RecvFlags;
    match rustix::net::recv(fd, &mut [0u8; 1], RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        Ok((0, _)) => Peeked::Eof,
        Ok(_) => Peeked::Data,
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => Peeked::Nothing,
        Err(_) => Peeked::Failed,
    }
}

/// The descriptor of a connection's socket while the connection holds it open.
#[derive(Default)]
pub struct SocketFd(RwLock<Option<RawFd>>);

impl SocketFd {
    /// Set once the connection's stream owns `fd`.
    pub fn set(&self, fd: RawFd) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(fd);
    }

    /// Called by the connection's stream as it is dropped, before its descriptor is closed: no
    /// [`Watch`] can duplicate the number after this (it may be another file by then).
    pub fn closing(&self) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Runs `f` on the open socket, or gives `None` when there is none (an in-memory pipe) or
    /// it is closing.
    fn with<T>(&self, f: impl FnOnce(BorrowedFd<'_>) -> T) -> Option<T> {
        let g = self.0.read().unwrap_or_else(|p| p.into_inner());
        let fd = (*g)?;
        // SAFETY: `fd` is the open socket of a live connection: its stream clears this slot
        // (taking the write lock) before it closes the descriptor, and the read lock held here
        // keeps it from doing so while `f` runs.
        Some(f(unsafe { BorrowedFd::borrow_raw(fd) }))
    }

    /// Whether bytes of a request have arrived that the connection has not read yet: a
    /// connection found idle with these is not closed (after a stall — a stopped process, a
    /// swapped-out box — the idle sweep can come before the connection reads what came in
    /// meanwhile, and closing then would drop a request the client already sent).
    pub fn has_pending_input(&self) -> bool {
        self.with(peek) == Some(Peeked::Data)
    }
}

/// A request's view of its client's socket (see the module docs).
pub struct Watch {
    fd: AsyncFd<OwnedFd>,
}

impl Watch {
    /// Watches the connection's socket (TCP, or the admin Unix socket); `None` when it has
    /// none.
    pub fn of(socket: &SocketFd) -> Option<Watch> {
        let fd = socket
            .with(|fd| rustix::io::fcntl_dupfd_cloexec(fd, 0))?
            .ok()?;
        // SAFETY: an `OwnedFd` owns its open descriptor until it is dropped with the `AsyncFd`.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok()?;
        Some(Watch { fd })
    }

    /// Whether the client has closed its side (FIN) or reset the connection.
    pub fn closed_now(&self) -> bool {
        matches!(peek(self.fd.as_fd()), Peeked::Eof | Peeked::Failed)
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
            // Pipelined bytes of the next request: the connection reads them later. Wait for the next
            // edge (a FIN or an RST after them).
            guard.clear_ready();
        }
    }

    /// Whether the connection was reset: the client is gone, not merely half-closed.
    fn reset(&self) -> bool {
        matches!(
            rustix::net::sockopt::socket_error(self.fd.as_fd()),
            Ok(Err(_))
        ) || peek(self.fd.as_fd()) == Peeked::Failed
    }

    /// After the client's FIN and a write to it: waits (up to `within`) for the reset a client
    /// that closed entirely answers with. True when it came: the client is gone.
    async fn reset_within(&self, within: Duration) -> bool {
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

/// A request that waits or streams: its place among `long_polls_max`, and the watch on its
/// client (none on a connection without a socket to watch).
pub struct Waiting {
    _place: OwnedSemaphorePermit,
    watch: Option<Arc<Watch>>,
}

impl Waiting {
    pub fn new(place: OwnedSemaphorePermit, watch: Option<Watch>) -> Waiting {
        Waiting {
            _place: place,
            watch: watch.map(Arc::new),
        }
    }

    /// Ends when the client closes its side or resets the connection; never without a watch.
    pub async fn client_closed(&self) {
        match &self.watch {
            Some(w) => w.closed().await,
            None => std::future::pending().await,
        }
    }

    /// Runs `f` until it ends or the client closes its side: `None` when the client went first
    /// (`f` is dropped: it must be a wait that has taken nothing yet).
    pub async fn unless_closed<F: Future>(&self, f: F) -> Option<F::Output> {
        tokio::select! {
            out = f => Some(out),
            _ = self.client_closed() => None,
        }
    }

    /// The client as a domain's wait sees it.
    pub fn departure(&self) -> crate::engine::departure::Departure {
        match &self.watch {
            Some(w) => crate::engine::departure::Departure::watching(w.clone()),
            None => crate::engine::departure::Departure::never(),
        }
    }

    /// After a FIN and a heartbeat written: whether the client left entirely (its reset came
    /// within `within`) rather than only closing its side. From then on the client is no
    /// longer watched (a half-closed client stays readable-at-EOF).
    pub async fn left_entirely(&mut self, within: Duration) -> bool {
        match self.watch.take() {
            Some(w) => w.reset_within(within).await,
            None => false,
        }
    }
}
