//! Small textual inputs from URLs: durations, times, cursors, names, keys, routes and queries.
//! The body is `shardbox::fuzzing::inputs`, which the corpus replay test also runs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardbox::fuzzing::inputs(data));
