//! The byte layout of log segments and records (see `docs/design.md`, "The write-ahead log").
//!
//! A segment file `wal/<seq, 20 digits>.log` starts with a 64-byte header; records follow, each
//! starting at a multiple of 8:
//!
//! ```text
//! segment header
//! 0   8  magic "SHBXWAL1"
//! 8   4  format version (1)
//! 12  4  reserved (0)
//! 16  8  segment sequence number (matches the file name)
//! 24  8  first LSN this segment holds
//! 32 28  reserved (0)
//! 60  4  crc32 of bytes 0..60
//!
//! record
//! 0   4  payload length
//! 4   4  crc32 of the payload
//! 8   8  LSN
//! 16  4  shard
//! 20  1  kind: 1 redo, 2 abort
//! 21  3  reserved (0)
//! 24  8  synced LSN: every record up to it was durable before this one was written
//! 32  4  crc32 of bytes 0..32
//! 36  4  reserved (0)
//! 40  …  payload, then zeros up to a multiple of 8
//! ```
//!
//! The two crcs are split so the log thread can stamp the synced LSN when it writes a group
//! without re-hashing payloads.

pub const SEGMENT_MAGIC: &[u8; 8] = b"SHBXWAL1";
pub const FORMAT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 64;
pub const RECORD_HEADER_BYTES: usize = 40;
pub const ALIGN: usize = 8;
/// Largest payload a record may carry (the length field is 32 bits; 1 GiB keeps a damaged
/// length from asking for absurd reads).
pub const PAYLOAD_BYTES_MAX: usize = 1 << 30;

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The physical effects of one writer batch ([`crate::engine::redo`]).
    Redo = 1,
    /// The record with the LSN in the payload (same shard) never committed: skip it on replay.
    Abort = 2,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Redo),
            2 => Some(Kind::Abort),
            _ => None,
        }
    }
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub len: usize,
    pub payload_crc: u32,
    pub lsn: u64,
    pub shard: u32,
    pub kind: Kind,
    pub synced: u64,
}

impl RecordHeader {
    /// Bytes the whole record occupies, padding included.
    pub fn frame_len(&self) -> usize {
        frame_len(self.len)
    }
}

/// Bytes a record with `payload` bytes occupies.
pub fn frame_len(payload: usize) -> usize {
    (RECORD_HEADER_BYTES + payload).div_ceil(ALIGN) * ALIGN
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Appends a record to `out` with a synced LSN of 0 (the log thread stamps it).
#[cfg(any(test, feature = "testing"))]
pub fn encode(out: &mut Vec<u8>, lsn: u64, shard: u32, kind: Kind, payload: &[u8]) {
    encode_with_crc(out, lsn, shard, kind, payload, crc32fast::hash(payload));
}

/// As [`encode`], with the payload's crc32 computed by the caller (outside any lock).
pub fn encode_with_crc(
    out: &mut Vec<u8>,
    lsn: u64,
    shard: u32,
    kind: Kind,
    payload: &[u8],
    payload_crc: u32,
) {
    let start = out.len();
    out.reserve(frame_len(payload.len()));
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload_crc.to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&shard.to_le_bytes());
    out.extend_from_slice(&[kind as u8, 0, 0, 0]);
    out.extend_from_slice(&0u64.to_le_bytes());
    let crc = crc32fast::hash(&out[start..start + 32]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(payload);
    out.resize(start + frame_len(payload.len()), 0);
}

/// Stamps the synced LSN into the record starting at `frame[0]` and fixes its header crc.
pub fn stamp_synced(frame: &mut [u8], synced: u64) {
    frame[24..32].copy_from_slice(&synced.to_le_bytes());
    let crc = crc32fast::hash(&frame[..32]);
    frame[32..36].copy_from_slice(&crc.to_le_bytes());
}

/// Parses a record header; `None` unless its crc, kind and length are plausible.
pub fn parse_header(b: &[u8]) -> Option<RecordHeader> {
    if b.len() < RECORD_HEADER_BYTES {
        return None;
    }
    if crc32fast::hash(&b[..32]) != le32(b, 32) {
        return None;
    }
    let len = le32(b, 0) as usize;
    // Every record carries a payload: eight zero bytes (length and crc) are never a record.
    if len == 0 || len > PAYLOAD_BYTES_MAX {
        return None;
    }
    Some(RecordHeader {
        len,
        payload_crc: le32(b, 4),
        lsn: le64(b, 8),
        shard: le32(b, 16),
        kind: Kind::from_u8(b[20])?,
        synced: le64(b, 24),
    })
}

/// True when `payload` matches the header's crc.
pub fn payload_ok(h: &RecordHeader, payload: &[u8]) -> bool {
    payload.len() == h.len && crc32fast::hash(payload) == h.payload_crc
}

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub seq: u64,
    pub first_lsn: u64,
}

pub fn encode_segment_header(h: SegmentHeader) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut b = [0u8; SEGMENT_HEADER_BYTES];
    b[..8].copy_from_slice(SEGMENT_MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&h.seq.to_le_bytes());
    b[24..32].copy_from_slice(&h.first_lsn.to_le_bytes());
    let crc = crc32fast::hash(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Why a segment header is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentHeaderError {
    #[error("shorter than a segment header")]
    Short,
    #[error("not a shardbox log segment (bad magic)")]
    Magic,
    #[error("segment header checksum mismatch")]
    Checksum,
    #[error("log format version {0} is newer than this build understands ({FORMAT_VERSION})")]
    Version(u32),
}

pub fn parse_segment_header(b: &[u8]) -> Result<SegmentHeader, SegmentHeaderError> {
    if b.len() < SEGMENT_HEADER_BYTES {
        return Err(SegmentHeaderError::Short);
    }
    if &b[..8] != SEGMENT_MAGIC {
        return Err(SegmentHeaderError::Magic);
    }
    if crc32fast::hash(&b[..60]) != le32(b, 60) {
        return Err(SegmentHeaderError::Checksum);
    }
    let version = le32(b, 8);
    if version > FORMAT_VERSION {
        return Err(SegmentHeaderError::Version(version));
    }
    Ok(SegmentHeader {
        seq: le64(b, 16),
        first_lsn: le64(b, 24),
    })
}

/// The file name of segment `seq`.
pub fn segment_name(seq: u64) -> String {
    format!("{seq:020}.log")
}

/// The sequence number in a segment file name, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_layout_is_pinned() {
        let mut out = Vec::new();
        encode(&mut out, 0x0102, 3, Kind::Redo, b"abc");
        assert_eq!(out.len(), 48);
        assert_eq!(&out[0..4], &3u32.to_le_bytes());
        assert_eq!(&out[4..8], &crc32fast::hash(b"abc").to_le_bytes());
        assert_eq!(&out[8..16], &0x0102u64.to_le_bytes());
        assert_eq!(&out[16..20], &3u32.to_le_bytes());
        assert_eq!(out[20], 1);
        assert_eq!(&out[40..43], b"abc");
        assert_eq!(&out[43..48], &[0; 5]);
        let h = parse_header(&out).unwrap();
        assert_eq!(
            (h.len, h.lsn, h.shard, h.kind, h.synced),
            (3, 0x0102, 3, Kind::Redo, 0)
        );
        assert!(payload_ok(&h, &out[40..43]));
        stamp_synced(&mut out, 99);
        assert_eq!(parse_header(&out).unwrap().synced, 99);
        out[24] ^= 1;
        assert!(
            parse_header(&out).is_none(),
            "header crc covers the synced LSN"
        );
    }

    #[test]
    fn segment_header_round_trips_and_rejects_damage() {
        let h = SegmentHeader {
            seq: 7,
            first_lsn: 1234,
        };
        let mut b = encode_segment_header(h);
        assert_eq!(parse_segment_header(&b), Ok(h));
        b[30] ^= 1;
        assert_eq!(parse_segment_header(&b), Err(SegmentHeaderError::Checksum));
        assert_eq!(
            parse_segment_header(&[0; 64]),
            Err(SegmentHeaderError::Magic)
        );
        assert_eq!(segment_name(7), "00000000000000000007.log");
        assert_eq!(parse_segment_name("00000000000000000007.log"), Some(7));
        assert_eq!(parse_segment_name("7.log"), None);
    }

    #[test]
    fn garbage_headers_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for _ in 0..20_000 {
            let n = rng.random_range(0..80);
            let b: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            let _ = parse_header(&b);
            let _ = parse_segment_header(&b);
        }
    }
}
