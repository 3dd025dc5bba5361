//! Connections spread over threads that each run their own current-thread tokio runtime
//! (`http_threads`): the shape the fastest Rust HTTP servers use. A connection lives on one
//! thread from accept to close — its socket registered with that thread's reactor, its
//! requests, timers and reads of the store all there — so nothing on a GET's path steals
//! work or wakes another thread. Writes still cross to the shard writers and back.
//!
//! The accept loop hands each connection to the next lane in turn. A lane whose queue is full
//! (or gone) is skipped; with every lane unavailable the connection runs on the caller's
//! runtime, so a connection is never dropped for want of a lane.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::mpsc;

/// A connection's whole life, ready to run on a lane.
pub type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Connections handed over but not yet started, per lane.
const QUEUE_MAX: usize = 256;

pub struct Lanes {
    senders: Vec<mpsc::Sender<Job>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    next: AtomicUsize,
}

impl Lanes {
    /// Starts `n` lanes (threads named `shardbox-http-N`).
    pub fn start(n: usize) -> std::io::Result<Lanes> {
        let mut senders = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, mut rx) = mpsc::channel::<Job>(QUEUE_MAX);
            senders.push(tx);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("shardbox-http-{i}"))
                    .spawn(move || {
                        rt.block_on(async move {
                            let mut running = tokio::task::JoinSet::new();
                            loop {
                                tokio::select! {
                                    job = rx.recv() => match job {
                                        Some(job) => { running.spawn(job); }
                                        None => break,
                                    },
                                    // Reap finished connections so the set stays small.
                                    Some(_) = running.join_next(), if !running.is_empty() => {}
                                }
                            }
                            // Closed by the server: its connections have been waited for.
                            while running.join_next().await.is_some() {}
                        })
                    })?,
            );
        }
        Ok(Lanes {
            senders,
            threads,
            next: AtomicUsize::new(0),
        })
    }

    /// Runs `job` on the next lane that takes it, else on the caller's runtime.
    pub fn spawn(&self, job: Job) {
        let n = self.senders.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut job = job;
        for k in 0..n {
            match self.senders[(start + k) % n].try_send(job) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j)) => {
                    job = j
                }
            }
        }
        tokio::spawn(job);
    }

    /// Stops the lanes once their connections have ended (the caller waited for them).
    pub async fn stop(self) {
        drop(self.senders);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}
