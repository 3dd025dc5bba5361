//! Raw bytes as an HTTP/1.1 request stream through the real server (in-memory pipe).
//! The body is `shardbox::fuzzing::http_raw`, which the corpus replay test also runs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardbox::fuzzing::http_raw(data));
