//! Reading the log's records for the feed, while the log thread writes and recycles it.
//!
//! A read starts at the log's index entry at or before the first LSN wanted
//! ([`crate::engine::wal::Wal::find`]) and walks frames forward, checking every frame's LSN is
//! the next one: a segment recycled under the reader shows another LSN (or none), which reads
//! as "gone", never as data. Only records the log may acknowledge and their shard has
//! committed are returned; a record still uncommitted ends the read (the next one comes
//! later), and one an `Abort` cancelled is passed over.

use crate::engine::wal::frame::{self, Kind, RECORD_HEADER_BYTES};
use crate::engine::wal::{IndexEntry, Wal};
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

/// Where reads ended lately (the next record's place). A reader that goes on where it stopped
/// (the sink, a follower) starts there instead of at the index entry before it, which lies up
/// to [`crate::engine::wal::INDEX_SPACING`] back and would cost a walk over every record in
/// between, checksums included, on every read.
#[derive(Debug, Default)]
pub struct Hints(Mutex<VecDeque<IndexEntry>>);

/// Read ends remembered (readers going on at once: the sink, followers, cursors' consumers).
const HINTS_MAX: usize = 16;

impl Hints {
    /// The place nearest before `lsn` that is closer than `from`.
    fn best(&self, lsn: u64, from: IndexEntry) -> Option<IndexEntry> {
        let hints = self.0.lock().unwrap_or_else(|p| p.into_inner());
        hints
            .iter()
            .filter(|h| h.lsn <= lsn && h.lsn > from.lsn)
            .max_by_key(|h| h.lsn)
            .copied()
    }

    fn note(&self, at: IndexEntry) {
        let mut hints = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if hints.contains(&at) {
            return;
        }
        if hints.len() >= HINTS_MAX {
            hints.pop_front();
        }
        hints.push_back(at);
    }
}

/// Bytes read from a segment at once, at most: a read starts with [`FIRST_CHUNK_BYTES`] and
/// doubles each time it needs more, so a reader that is caught up (a few new records a read)
/// does not copy 256 KiB to ship them.
const CHUNK_BYTES: usize = 256 << 10;
const FIRST_CHUNK_BYTES: usize = 16 << 10;

/// One record read back.
#[derive(Debug, Clone)]
pub struct Read {
    pub lsn: u64,
    pub shard: u32,
    pub kind: Kind,
    pub payload: Vec<u8>,
    /// The payload's crc32, as its header holds it (checked when it was read).
    pub crc: u32,
}

/// What a read returns: which records, at most how many and about how many bytes.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    pub max_records: usize,
    pub max_bytes: usize,
    pub which: Records,
}

/// Which records a read returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Records {
    /// Committed redo records (the feed's changes).
    Committed,
    /// Every record once it is decided — committed or cancelled, aborts and every other kind
    /// included: the log itself, consecutive LSNs, as a copy of it needs (the sink's log
    /// stream).
    All,
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
    /// The size of the next read from the file.
    next_chunk: usize,
}

impl Segment {
    fn open(wal: &Wal, seq: u64) -> Option<Segment> {
        let file = File::open(wal.dir().join(frame::segment_name(seq))).ok()?;
        Some(Segment {
            file,
            seq,
            chunk: Vec::new(),
            chunk_at: 0,
            next_chunk: FIRST_CHUNK_BYTES,
        })
    }

    /// `len` bytes at `offset` (fewer at the end of the file).
    fn at(&mut self, offset: u64, len: usize) -> std::io::Result<&[u8]> {
        let end = offset + len as u64;
        if offset < self.chunk_at || end > self.chunk_at + self.chunk.len() as u64 {
            let want = len.max(self.next_chunk);
            self.next_chunk = (self.next_chunk * 2).min(CHUNK_BYTES);
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
/// `max_records` and about `max_bytes`; starts from a hint when one is nearer than the index,
/// and leaves one where it ends.
pub fn read_after(
    wal: &Wal,
    after: u64,
    horizon: u64,
    want: Want,
    vis: &dyn Visibility,
    hints: &Hints,
) -> Result<Vec<Read>, ReadError> {
    let Want {
        max_records,
        max_bytes,
        which,
    } = want;
    let first = after + 1;
    if first > horizon {
        return Ok(Vec::new());
    }
    let gone = || ReadError::Gone {
        oldest: wal.oldest_lsn(),
    };
    let mut start = wal.find(first).ok_or_else(gone)?;
    // A hint is taken only where its segment still holds the record it names.
    let mut hinted = None;
    if let Some(h) = hints.best(first, start) {
        if let Some(mut s) = Segment::open(wal, h.seq) {
            let named = s
                .at(h.offset, RECORD_HEADER_BYTES)
                .ok()
                .and_then(frame::parse_header)
                .is_some_and(|header| header.lsn == h.lsn);
            if named {
                start = h;
                hinted = Some(s);
            }
        }
    }
    let mut seg = match hinted {
        Some(s) => s,
        None => Segment::open(wal, start.seq).ok_or_else(gone)?,
    };
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
            let wanted = match which {
                Records::Committed => {
                    header.kind == Kind::Redo && vis.committed(header.shard, expect) && !aborted()
                }
                Records::All => true,
            };
            // A cancelled record goes to a copy of the log without its effects (a redo of no
            // operation): its LSN stays taken, and a copy that ends before the record's Abort
            // cannot replay a write its client was told had failed.
            let cancelled = which == Records::All && header.kind == Kind::Redo && aborted();
            if wanted {
                let payload = match cancelled {
                    true => crate::engine::redo::CANCELLED.to_vec(),
                    false => seg
                        .at(offset + RECORD_HEADER_BYTES as u64, header.len)
                        .map_err(|e| ReadError::Io(e.to_string()))?
                        .to_vec(),
                };
                bytes += payload.len();
                let crc = match cancelled {
                    true => crc32fast::hash(crate::engine::redo::CANCELLED),
                    false => header.payload_crc,
                };
                out.push(Read {
                    lsn: expect,
                    shard: header.shard,
                    kind: header.kind,
                    payload,
                    crc,
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
    hints.note(IndexEntry {
        lsn: expect,
        seq: seg.seq,
        offset,
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(lsn: u64, seq: u64, offset: u64) -> IndexEntry {
        IndexEntry { lsn, seq, offset }
    }

    #[test]
    fn a_hint_is_the_nearest_place_before_the_record_and_nearer_than_the_index() {
        let hints = Hints::default();
        hints.note(at(10, 1, 800));
        hints.note(at(40, 2, 300));
        hints.note(at(40, 2, 300));
        hints.note(at(90, 3, 100));
        assert_eq!(hints.0.lock().unwrap().len(), 3, "one place noted once");
        let index = at(5, 1, 16);
        assert_eq!(hints.best(50, index), Some(at(40, 2, 300)));
        assert_eq!(hints.best(40, index), Some(at(40, 2, 300)));
        assert_eq!(hints.best(9, index), None, "every hint lies after the record");
        assert_eq!(hints.best(50, at(45, 2, 900)), None, "the index is nearer");
        for lsn in 100..100 + HINTS_MAX as u64 {
            hints.note(at(lsn, 4, lsn));
        }
        assert_eq!(hints.0.lock().unwrap().len(), HINTS_MAX);
        assert_eq!(hints.best(50, index), None, "the oldest places made room");
    }
}
