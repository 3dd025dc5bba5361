//! One shard: a redb file, its writer thread and its health.

use super::writer::{Msg, Mutation};
use crate::engine::EngineError;
use redb::{Database, ReadTransaction, ReadableDatabase};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub use super::shard_state::ShardState;

pub struct Shard {
    pub id: usize,
    pub db: Arc<Database>,
    pub state: Arc<ShardState>,
    tx: flume::Sender<Msg>,
    queue_wait: Duration,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Shard {
    pub(crate) fn new(
        id: usize,
        db: Arc<Database>,
        state: Arc<ShardState>,
        tx: flume::Sender<Msg>,
        queue_wait: Duration,
        thread: JoinHandle<()>,
    ) -> Self {
        Self {
            id,
            db,
            state,
            tx,
            queue_wait,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Operations waiting in the writer queue.
    pub fn queue_len(&self) -> usize {
        self.tx.len()
    }

    /// A read transaction (MVCC: never blocked by the writer).
    pub fn read(&self) -> Result<ReadTransaction, EngineError> {
        self.db
            .begin_read()
            .map_err(|e| super::storage_error(self.id, e))
    }

    /// Queues an operation, waiting up to the configured bound for room.
    pub(crate) async fn submit(&self, op: Box<dyn Mutation>) -> Result<(), EngineError> {
        if let Some(reason) = self.state.failure() {
            return Err(EngineError::ShardUnavailable {
                shard: self.id,
                reason,
            });
        }
        match tokio::time::timeout(self.queue_wait, self.tx.send_async(Msg::Op(op))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.gone()),
            Err(_) => Err(EngineError::Overloaded { shard: self.id }),
        }
    }

    /// Hands a copied record to the writer (waiting for room: a standby's follower is the
    /// only sender, and it waits for nothing else).
    pub(crate) async fn send_replay(&self, msg: Msg) -> Result<(), EngineError> {
        if let Some(reason) = self.state.failure() {
            return Err(EngineError::ShardUnavailable {
                shard: self.id,
                reason,
            });
        }
        self.tx.send_async(msg).await.map_err(|_| self.gone())
    }

    /// The error for a writer that is no longer there.
    pub(crate) fn gone(&self) -> EngineError {
        match self.state.failure() {
            Some(reason) => EngineError::ShardUnavailable {
                shard: self.id,
                reason,
            },
            None => EngineError::ShuttingDown,
        }
    }

    /// Asks the writer to finish what is queued and exit, then waits for it.
    pub(crate) fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Shard {
    /// Queues an operation only if there is room right now.
    pub(crate) fn try_submit(&self, op: Box<dyn Mutation>) -> bool {
        self.state.failure().is_none() && self.tx.try_send(Msg::Op(op)).is_ok()
    }
}
