//! Request paths from the network: routing and key decoding never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(path) = std::str::from_utf8(data) {
        for (_, template, _) in shardbox::http::routes() {
            if let Ok(shardbox::http::Match::Yes(p)) = shardbox::http::match_template(template, path) {
                let _ = shardbox::kv::validate_namespace(p.get("ns"));
                let _ = shardbox::kv::validate_key(p.get("key"));
            }
        }
    }
});
