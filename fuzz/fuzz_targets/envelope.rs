//! The on-disk envelope decoder must reject any bytes with an error, never panic, and accept
//! back exactly what the encoder wrote.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shardbox::engine::codec;

fuzz_target!(|data: &[u8]| {
    if let Ok((h, payload)) = codec::decode(data) {
        let again = codec::encode(h.revision, h.expires_at_ms, h.content_type.as_deref(), payload);
        assert_eq!(again, data, "a decoded envelope re-encodes to the same bytes");
    }
    let _ = codec::decode_header(data);
});
