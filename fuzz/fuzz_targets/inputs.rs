//! Small textual inputs: durations (ttl), listing cursors, durability modes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = shardbox::util::parse_duration_ms(text);
        let _ = shardbox::kv::list_cursor(text);
        let _ = shardbox::config::DurabilityMode::parse(text);
    }
});
