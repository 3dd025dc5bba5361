//! A MANIFEST file's bytes.
//! The body is `shardbox::fuzzing::manifest`, which the corpus replay test also runs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardbox::fuzzing::manifest(data));
