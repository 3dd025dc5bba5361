//! A cron expression: parse, then the next tick after a few instants.
//! The body is `shardbox::fuzzing::cron`, which the corpus replay test also runs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardbox::fuzzing::cron(data));
