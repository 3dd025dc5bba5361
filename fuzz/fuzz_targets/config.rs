//! A config file's TOML text, resolved and validated as `--config` does.
//! The body is `shardbox::fuzzing::config`, which the corpus replay test also runs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardbox::fuzzing::config(data));
