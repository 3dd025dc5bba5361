//! Reading the log's records for the feed, while the log thread writes and recycles it.
//!
//! A read starts at the log's index entry at or before the first LSN wanted
//! ([`crate::engine::wal::Wal::find`]) and walks frames forward, checking every frame's LSN is
//! the next one: a segment recycled under the reader shows another LSN (or none), which reads
//! as "gone", never as data. Only records the log may acknowledge and their shard has
//! committed are returned; a record still uncommitted ends the read (the next one comes
//! later), and one an `Abort` cancelled is passed over.

use crate::engine::wal::frame::{self, Kind, RECORD_HEADER_BYTES};
use crate::engine::wal::Wal;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Bytes read from a segment at once.
const CHUNK_BYTES: usize = 256 << 10;

/// One record read back.
#[derive(Debug, Clone)]
pub struct Read {
    pub lsn: u64,
    pub payload: Vec<u8>,
}

/// Why a read found nothing to continue from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The log no longer has the record after the position; `oldest` is the oldest it has.
    Gone { oldest: Option<u64> },
    Io(String),
}

/// What decides whether a record may be shown.
pub trait Visibility {
    /// Whether record `lsn` of `shard` is committed (shown), and whether it was cancelled
    /// (passed over).
    fn committed(&self, shard: u32, lsn: u64) -> bool;
    fn aborted(&self, shard: u32, lsn: u64) -> bool;
}

/// A segment file read in chunks.
struct Segment {
    file: File,
    seq: u64,
    chunk: Vec<u8>,
    chunk_at: u64,
}

impl Segment {
    fn open(wal: &Wal, seq: u64) -> Option<Segment> {
        let file = File::open(wal.dir().join(frame::segment_name(seq))).ok()?;
        Some(Segment {
            file,
            seq,
            chunk: Vec::new(),
            chunk_at: 0,
        })
    }

    /// `len` bytes at `offset` (fewer at the end of the file).
    fn at(&mut self, offset: u64, len: usize) -> std::io::Result<&[u8]> {
        let end = offset + len as u64;
        if offset < self.chunk_at || end > self.chunk_at + self.chunk.len() as u64 {
            let want = len.max(CHUNK_BYTES);
            self.chunk.resize(want, 0);
            let mut got = 0;
            while got < want {
                match self.file.read_at(&mut self.chunk[got..], offset + got as u64)? {
                    0 => break,
                    n => got += n,
                }
            }
            self.chunk.truncate(got);
            self.chunk_at = offset;
        }
        let from = (offset - self.chunk_at) as usize;
        let to = (from + len).min(self.chunk.len());
        Ok(&self.chunk[from..to])
    }
}

/// Records after `after` up to `horizon` (the log's acknowledged mark), in LSN order, at most
/// `max_records` and about `max_bytes`.
pub fn read_after(
    wal: &Wal,
    after: u64,
    horizon: u64,
    max_records: usize,
    max_bytes: usize,
    vis: &dyn Visibility,
) -> Result<Vec<Read>, ReadError> {
    let first = after + 1;
    if first > horizon {
        return Ok(Vec::new());
    }
    let gone = || ReadError::Gone {
        oldest: wal.oldest_lsn(),
    };
    let start = wal.find(first).ok_or_else(gone)?;
    let mut seg = Segment::open(wal, start.seq).ok_or_else(gone)?;
    let (mut offset, mut expect) = (start.offset, start.lsn);
    let mut out = Vec::new();
    let mut bytes = 0;
    while expect <= horizon && out.len() < max_records && bytes < max_bytes {
        let head = seg
            .at(offset, RECORD_HEADER_BYTES)
            .map_err(|e| ReadError::Io(e.to_string()))?;
        let header = frame::parse_header(head).filter(|h| h.lsn == expect);
        // The record's payload, whole and matching its checksum.
        let whole = match header {
            Some(h) => {
                let payload = seg
                    .at(offset + RECORD_HEADER_BYTES as u64, h.len)
                    .map_err(|e| ReadError::Io(e.to_string()))?;
                payload.len() == h.len && frame::payload_ok(&h, payload)
            }
            None => false,
        };
        let Some(header) = header.filter(|_| whole) else {
            // The segment's records end here (or its last record was torn by a crash and
            // written again in a later segment): the next segment that starts at `expect`
            // goes on, else the log no longer has it (or it is not written yet, which at or
            // below the horizon cannot be).
            let next = wal.segment_starting(seg.seq, expect).ok_or_else(gone)?;
            seg = Segment::open(wal, next.seq).ok_or_else(gone)?;
            offset = next.offset;
            continue;
        };
        let len = header.frame_len();
        if expect >= first {
            let aborted = || vis.aborted(header.shard, expect);
            if header.kind == Kind::Redo && !vis.committed(header.shard, expect) && !aborted() {
                break; // not visible yet: everything after waits for it
            }
            if header.kind == Kind::Redo && vis.committed(header.shard, expect) && !aborted() {
                let payload = seg
                    .at(offset + RECORD_HEADER_BYTES as u64, header.len)
                    .map_err(|e| ReadError::Io(e.to_string()))?;
                bytes += payload.len();
                out.push(Read {
                    lsn: expect,
                    payload: payload.to_vec(),
                });
            }
        }
        offset += len as u64;
        expect += 1;
    }
    // A segment that was recycled under the reader after its records were read: they may be
    // another incarnation's. The index says whether the first one is still the log's.
    if out.first().is_some_and(|r| wal.find(r.lsn).is_none()) {
        return Err(gone());
    }
    Ok(out)
}
