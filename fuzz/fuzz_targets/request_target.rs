//! Request paths from the network: routing and key decoding never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(path) = std::str::from_utf8(data) {
        if let Ok(shardbox::http::Route::KvKey { ns, key }) = shardbox::http::parse_route(path) {
            let _ = shardbox::kv::validate_namespace(ns);
            let _ = shardbox::kv::validate_key(&key);
        }
    }
});
