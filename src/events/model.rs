//! Stored event-stream records and table names.
//!
//! | table | key | value |
//! |---|---|---|
//! | `ev_streams` | stream name | [`StreamMeta`] |
//! | `ev_buckets` | `stream ‖ 0x00 ‖ bucket_start_ms BE` | [`BucketStats`] |
//! | `ev/<stream>/<bucket_start_ms>` (one per bucket) | `ts_ms BE ‖ seq u32 BE` | [`Event`] |
//!
//! A bucket starts at `ts - ts % bucket_ms` (aligned to the Unix epoch). Retention and trimming
//! delete whole bucket tables.

use bincode::{Decode, Encode};
use redb::TableDefinition;

pub const EV_STREAMS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("ev_streams");
pub const EV_BUCKETS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("ev_buckets");

pub const RECORD_VERSION: u8 = 1;


/// A stream's configuration and running totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct StreamMeta {
    pub version: u8,
    pub bucket_ms: u64,
    /// 0 = keep forever.
    pub retention_ms: u64,
    pub created_ms: u64,
    /// The newest id handed out: server-assigned ids continue after it.
    pub last_ms: u64,
    pub last_seq: u32,
    pub events: u64,
    pub bytes: u64,
}

/// Per-bucket counters, updated in the same commit as the appends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Encode, Decode)]
pub struct BucketStats {
    pub events: u64,
    pub bytes: u64,
    pub min_ts: u64,
    pub max_ts: u64,
}

/// One stored event.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Event {
    pub kind: Option<String>,
    /// JSON text.
    pub data: Vec<u8>,
}

/// An [`Event`] as it is written, borrowing the request's bytes (the same encoding: a test pins
/// it), so an append copies the data once, into the record.
#[derive(Encode)]
pub struct EventRef<'a> {
    pub kind: Option<&'a str>,
    pub data: &'a [u8],
}

pub use crate::engine::codec::{decode_record as decode, encode_record as encode};

/// Decodes a stream record, refusing a record version this build does not write.
pub fn decode_meta(bytes: &[u8]) -> Result<StreamMeta, String> {
    let m: StreamMeta = decode(bytes)?;
    if m.version != RECORD_VERSION {
        return Err(format!("stream record version {}", m.version));
    }
    Ok(m)
}

pub fn bucket_start(ts: u64, bucket_ms: u64) -> u64 {
    ts - ts % bucket_ms.max(1)
}

/// The name of a bucket's table.
pub fn bucket_table(stream: &str, start: u64) -> String {
    format!("ev/{stream}/{start:015}")
}

pub fn bucket_key(stream: &str, start: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(stream.len() + 9);
    k.extend_from_slice(stream.as_bytes());
    k.push(0);
    k.extend_from_slice(&start.to_be_bytes());
    k
}

pub fn bucket_prefix(stream: &str) -> Vec<u8> {
    let mut k = stream.as_bytes().to_vec();
    k.push(0);
    k
}

pub fn event_key(ts: u64, seq: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&ts.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn parse_event_key(k: &[u8]) -> Option<(u64, u32)> {
    if k.len() != 12 {
        return None;
    }
    Some((
        u64::from_be_bytes(k[..8].try_into().ok()?),
        u32::from_be_bytes(k[8..].try_into().ok()?),
    ))
}

/// `<ms>-<seq>`
pub fn format_id(ts: u64, seq: u32) -> String {
    format!("{ts}-{seq}")
}

pub fn parse_id(id: &str) -> Option<(u64, u32)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_borrowed_event_encodes_as_the_stored_one() {
        for kind in [None, Some("click")] {
            let owned = Event {
                kind: kind.map(str::to_string),
                data: br#"{"x":1}"#.to_vec(),
            };
            let borrowed = EventRef {
                kind,
                data: br#"{"x":1}"#,
            };
            assert_eq!(encode(&owned), encode(&borrowed));
            assert_eq!(decode::<Event>(&encode(&borrowed)).unwrap(), owned);
        }
    }

    #[test]
    fn ids_and_keys() {
        assert_eq!(
            parse_id(&format_id(1_700_000_000_123, 7)),
            Some((1_700_000_000_123, 7))
        );
        assert_eq!(parse_id("12"), None);
        assert_eq!(parse_id("a-1"), None);
        let k = event_key(5, 9);
        assert_eq!(parse_event_key(&k), Some((5, 9)));
        assert!(event_key(5, 9) < event_key(5, 10));
        assert!(event_key(5, u32::MAX) < event_key(6, 0));
        assert_eq!(bucket_start(3_600_000 * 5 + 12, 3_600_000), 3_600_000 * 5);
    }
}
