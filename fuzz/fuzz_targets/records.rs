//! Every on-disk record decoder (the first byte picks it); what decodes re-encodes to its bytes.
//! The body is `shardbox::fuzzing::records`, which the corpus replay test also runs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardbox::fuzzing::records(data));
