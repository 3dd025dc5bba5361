//! shardbox's integration tests: one crate, so the helpers in `common/` are compiled and
//! linked once, and every test runs against the real library, binary and server.
//!
//! A test that changes what the whole process shares — an armed fault point, the umask, a
//! process-wide counter it counts exactly — starts with `if !common::alone() { return; }`: it
//! then runs by itself in a child process of this binary, so the other tests never see it.
//! Run one group with `cargo test --test it kv_api::`, one test with its full name.

mod common;

mod access;
mod access_log;
mod background;
mod backup;
mod cache_api;
mod cli_client;
mod config_files;
mod crash;
mod disk_full;
mod embedding;
mod engine;
mod events_api;
mod events_crash;
mod export;
mod extreme_input;
mod feed;
mod file_modes;
mod framing;
mod fuzz_corpus;
mod http1;
mod idempotency;
mod io_errors;
mod kill_harness;
mod kv_api;
mod kv_cache;
mod layers;
mod lifecycle;
mod metrics;
mod openapi;
mod queue_api;
mod queue_crash;
mod readme;
mod replay;
mod replies;
mod schemathesis;
mod sink;
mod staging;
mod standby;
mod status_page;
mod waiters;
mod wal;
mod wal_abort;
mod wal_lifecycle;
mod wal_race;
