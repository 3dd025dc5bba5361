//! JSON and NDJSON bodies of every domain: the first byte picks the route.
//! The body is `shardbox::fuzzing::http_body`, which the corpus replay test also runs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardbox::fuzzing::http_body(data));
