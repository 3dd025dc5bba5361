//! Bytes as a write-ahead-log segment file, read by recovery as at startup.
//! The body is `shardbox::fuzzing::wal_segment`, which the corpus replay test also runs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardbox::fuzzing::wal_segment(data));
