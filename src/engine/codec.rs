//! The on-disk value envelope.
//!
//! Every stored value is `header ‖ payload`. The header is encoded with bincode 2 using fixed-width
//! little-endian integers, so its layout is explicit (see `docs/design.md`):
//!
//! ```text
//! offset size field
//! 0      1    version        (ENVELOPE_VERSION = 1)
//! 1      1    flags          (reserved, 0)
//! 2      8    revision       u64 LE
//! 10     8    expires_at_ms  u64 LE, 0 = never
//! 18     4    crc32          u32 LE, crc32 (IEEE) of the payload
//! 22     8    ct_len         u64 LE, length of the content type (≤ 255)
//! 30     n    content type   UTF-8
//! 30+n   …    payload
//! ```
//!
//! The header's size depends only on the content type, so a reader never trusts a length it has
//! not bounded first.

use bincode::{Decode, Encode};

/// The envelope format this build writes. A later release reads every version up to its own.
pub const ENVELOPE_VERSION: u8 = 1;
pub use crate::base::limits::CONTENT_TYPE_BYTES_MAX;
/// Bytes of a header with an empty content type.
pub const HEADER_BYTES_MIN: usize = 30;

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
struct RawHeader {
    version: u8,
    flags: u8,
    revision: u64,
    expires_at_ms: u64,
    crc32: u32,
    content_type: String,
}

/// The decoded header of a stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub revision: u64,
    /// Milliseconds since the Unix epoch; `None` means the value does not expire.
    pub expires_at_ms: Option<u64>,
    pub content_type: Option<String>,
    pub crc32: u32,
    /// Total header length in bytes; the payload starts here.
    pub len: usize,
}

impl Header {
    /// True when the value is expired at `now_ms` (an expiry equal to now is expired).
    pub fn is_expired(&self, now_ms: u64) -> bool {
        matches!(self.expires_at_ms, Some(t) if t <= now_ms)
    }
}

/// Why an envelope could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("envelope header is malformed: {0}")]
    Malformed(String),
    #[error("envelope version {0} is newer than this build understands ({ENVELOPE_VERSION})")]
    UnknownVersion(u8),
    #[error("payload checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<{ HEADER_BYTES_MIN + CONTENT_TYPE_BYTES_MAX }>()
}

/// Encodes a value. `content_type` longer than [`CONTENT_TYPE_BYTES_MAX`] is truncated at a
/// character boundary (callers validate first; this keeps the invariant local).
#[cfg(any(test, feature = "testing"))]
pub fn encode(
    revision: u64,
    expires_at_ms: Option<u64>,
    content_type: Option<&str>,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(content_type, payload.len()));
    encode_into(&mut out, revision, expires_at_ms, content_type, payload);
    out
}

fn clamp_content_type(content_type: Option<&str>) -> &str {
    let mut ct = content_type.unwrap_or("");
    while ct.len() > CONTENT_TYPE_BYTES_MAX {
        let mut cut = CONTENT_TYPE_BYTES_MAX;
        while !ct.is_char_boundary(cut) {
            cut -= 1;
        }
        ct = &ct[..cut];
    }
    ct
}

/// Bytes [`encode`] produces for this content type and payload length.
pub fn encoded_len(content_type: Option<&str>, payload_len: usize) -> usize {
    HEADER_BYTES_MIN + clamp_content_type(content_type).len() + payload_len
}

/// Appends the encoded value to `out` (the layout in the module docs, written field by field:
/// the same bytes bincode's fixed-int encoding of the header gives, pinned by a test).
pub fn encode_into(
    out: &mut Vec<u8>,
    revision: u64,
    expires_at_ms: Option<u64>,
    content_type: Option<&str>,
    payload: &[u8],
) {
    let ct = clamp_content_type(content_type);
    out.reserve(HEADER_BYTES_MIN + ct.len() + payload.len());
    out.push(ENVELOPE_VERSION);
    out.push(0);
    out.extend_from_slice(&revision.to_le_bytes());
    out.extend_from_slice(&expires_at_ms.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(&(ct.len() as u64).to_le_bytes());
    out.extend_from_slice(ct.as_bytes());
    out.extend_from_slice(payload);
}

/// Decodes only the header, without touching the payload (listing, revision checks).
pub fn decode_header(bytes: &[u8]) -> Result<Header, CodecError> {
    if bytes.len() < HEADER_BYTES_MIN {
        return Err(CodecError::Malformed(format!(
            "{} bytes, shorter than the {HEADER_BYTES_MIN}-byte minimum",
            bytes.len()
        )));
    }
    if bytes[0] != ENVELOPE_VERSION {
        return Err(CodecError::UnknownVersion(bytes[0]));
    }
    let (raw, len): (RawHeader, usize) = bincode::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    // No flag is defined: a set bit is damage or a newer format, never something to ignore
    // (found by the `records` fuzz target: the decoder took any flags byte).
    if raw.flags != 0 {
        return Err(CodecError::Malformed(format!(
            "flags byte is {:#04x}; this version writes 0",
            raw.flags
        )));
    }
    if raw.content_type.len() > CONTENT_TYPE_BYTES_MAX {
        return Err(CodecError::Malformed("content type too long".into()));
    }
    Ok(Header {
        revision: raw.revision,
        expires_at_ms: (raw.expires_at_ms != 0).then_some(raw.expires_at_ms),
        content_type: (!raw.content_type.is_empty()).then_some(raw.content_type),
        crc32: raw.crc32,
        len,
    })
}

/// Decodes a whole envelope and verifies the payload checksum.
pub fn decode(bytes: &[u8]) -> Result<(Header, &[u8]), CodecError> {
    let header = decode_header(bytes)?;
    let payload = &bytes[header.len..];
    let computed = crc32fast::hash(payload);
    if computed != header.crc32 {
        return Err(CodecError::Checksum {
            stored: header.crc32,
            computed,
        });
    }
    Ok((header, payload))
}

fn record_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<{ 64 << 20 }>()
}

/// Encodes a domain record (queue jobs, stream metadata, …) with the same explicit-width
/// bincode layout as the envelope header. Records start with their own version byte.
pub fn encode_record<T: Encode>(v: &T) -> Vec<u8> {
    bincode::encode_to_vec(v, record_config()).unwrap_or_default()
}

/// Decodes a domain record; a record larger than 64 MiB or malformed is an error, not a panic.
pub fn decode_record<T: Decode<()>>(bytes: &[u8]) -> Result<T, String> {
    bincode::decode_from_slice(bytes, record_config())
        .map(|(v, _)| v)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let bytes = encode(7, Some(1_700_000_000_000), Some("text/plain"), b"hello");
        assert_eq!(bytes.len(), HEADER_BYTES_MIN + 10 + 5);
        let (h, p) = decode(&bytes).unwrap();
        assert_eq!(h.revision, 7);
        assert_eq!(h.expires_at_ms, Some(1_700_000_000_000));
        assert_eq!(h.content_type.as_deref(), Some("text/plain"));
        assert_eq!(p, b"hello");
        let bytes = encode(1, None, None, b"");
        let (h, p) = decode(&bytes).unwrap();
        assert_eq!((h.expires_at_ms, h.content_type, p.len()), (None, None, 0));
    }

    #[test]
    fn layout_is_pinned() {
        let bytes = encode(0x0102, Some(5), Some("a"), b"xy");
        let mut want = vec![1u8, 0];
        want.extend_from_slice(&0x0102u64.to_le_bytes());
        want.extend_from_slice(&5u64.to_le_bytes());
        want.extend_from_slice(&crc32fast::hash(b"xy").to_le_bytes());
        want.extend_from_slice(&1u64.to_le_bytes());
        want.extend_from_slice(b"axy");
        assert_eq!(bytes, want);
    }

    #[test]
    fn hand_written_header_matches_bincode() {
        for (rev, exp, ct) in [
            (0u64, None, None),
            (u64::MAX, Some(7u64), Some("text/plain; charset=utf-8")),
        ] {
            let raw = RawHeader {
                version: ENVELOPE_VERSION,
                flags: 0,
                revision: rev,
                expires_at_ms: exp.unwrap_or(0),
                crc32: crc32fast::hash(b"pay"),
                content_type: ct.unwrap_or("").to_string(),
            };
            let mut want = Vec::new();
            bincode::encode_into_std_write(&raw, &mut want, config()).unwrap();
            want.extend_from_slice(b"pay");
            assert_eq!(encode(rev, exp, ct, b"pay"), want);
            assert_eq!(encoded_len(ct, 3), want.len());
        }
    }

    #[test]
    fn crc_mismatch_is_detected() {
        let mut bytes = encode(3, None, None, b"payload");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        assert!(matches!(decode(&bytes), Err(CodecError::Checksum { .. })));
    }

    #[test]
    fn garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        for _ in 0..20_000 {
            let len = rng.random_range(0..80);
            let mut b: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if !b.is_empty() && rng.random_bool(0.5) {
                b[0] = ENVELOPE_VERSION;
            }
            let _ = decode(&b);
        }
        assert!(matches!(
            decode(&[2u8; 40]),
            Err(CodecError::UnknownVersion(2))
        ));
        assert!(decode(&[1u8; 3]).is_err());
    }
}
