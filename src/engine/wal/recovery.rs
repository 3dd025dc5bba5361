//! Reading the log back: every valid record in LSN order, where the log ends, and whether what
//! follows the end is a torn write (clean end) or damage to records that were durable (refused).
//!
//! The rules (numbered as in `docs/design.md`, invariants W1–W6):
//! - Records are consecutive: the record after LSN n is n + 1. A frame that does not parse, fails
//!   a crc, or carries another LSN ends its segment.
//! - A segment whose records end early is followed only by a segment whose header starts at the
//!   next LSN (a rollover or a restart began it), or by nothing (the end of the log).
//! - After the end of a segment's records, a valid frame with an LSN at or past the expected one
//!   whose synced LSN says the expected record was already durable when it was written proves the
//!   expected record was damaged after it was synced: the log is refused, naming the segment and
//!   offset. Anything else there is the remains of a write that never completed (a torn tail).

use super::frame::{self, Kind, RecordHeader, SEGMENT_HEADER_BYTES};
use std::path::{Path, PathBuf};

/// One segment as found.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    pub seq: u64,
    pub path: PathBuf,
    /// Last valid record in this segment, if any.
    pub last_lsn: Option<u64>,
    /// Bytes its header and valid records take (a segment file is preallocated larger).
    pub used_bytes: u64,
    /// The LSN its header says it starts at.
    pub first_lsn: u64,
}

/// How the log ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// Zeros, or an older incarnation of a recycled segment: nothing was cut.
    Clean,
    /// A record that was being written when the process or machine stopped; discarded.
    Torn {
        segment: PathBuf,
        offset: u64,
        detail: String,
    },
}

/// The result of reading the whole log.
#[derive(Debug, Clone)]
pub struct Scan {
    pub segments: Vec<SegmentInfo>,
    /// The LSN the next record will get (1 for an empty log).
    pub next_lsn: u64,
    pub records: u64,
    pub tail: Tail,
}

/// Damage the log refuses to open with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ScanError {
    #[error("write-ahead log damaged in {segment} at offset {offset}: {detail}; the records after it were durable, so the log cannot be cut there. Restore from a backup, or move the wal directory aside to open the shards at their last checkpoint (losing the writes after it)")]
    Corrupt {
        segment: PathBuf,
        offset: u64,
        detail: String,
    },
    #[error("cannot read the write-ahead log: {0}")]
    Io(String),
}

/// Why [`scan`] stopped: the log itself, or the caller's `visit` (its error, passed through).
#[derive(Debug, Clone)]
pub enum ScanFailure<E> {
    Log(ScanError),
    Visit(E),
}

impl<E> From<ScanError> for ScanFailure<E> {
    fn from(e: ScanError) -> Self {
        ScanFailure::Log(e)
    }
}

impl<E: std::fmt::Display> std::fmt::Display for ScanFailure<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScanFailure::Log(e) => e.fmt(f),
            ScanFailure::Visit(e) => e.fmt(f),
        }
    }
}

/// Lists the segment files of `dir` in sequence order (other files are ignored).
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, ScanError> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(ScanError::Io(format!("{}: {e}", dir.display()))),
    };
    for entry in rd {
        let entry = entry.map_err(|e| ScanError::Io(e.to_string()))?;
        let name = entry.file_name();
        if let Some(seq) = name.to_str().and_then(frame::parse_segment_name) {
            out.push((seq, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads every segment of `dir`, calling `visit` for each valid record in LSN order.
pub fn scan<E>(
    dir: &Path,
    mut visit: impl FnMut(&RecordHeader, &[u8], &Path, u64) -> Result<(), E>,
) -> Result<Scan, ScanFailure<E>> {
    let files = list_segments(dir)?;
    let mut out = Scan {
        segments: Vec::new(),
        next_lsn: 1,
        records: 0,
        tail: Tail::Clean,
    };
    let mut expected: Option<u64> = None;
    for (i, (seq, path)) in files.iter().enumerate() {
        let last_file = i + 1 == files.len();
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) => return Err(ScanError::Io(format!("{}: {e}", path.display())).into()),
        };
        let header = match frame::parse_segment_header(&data) {
            Ok(h) if h.seq == *seq => h,
            // A segment being created or recycled when the process stopped: the end of the log.
            Ok(_) | Err(_) if last_file => break,
            Ok(h) => {
                return Err(
                    corrupt(path, 0, format!("segment header names sequence {}", h.seq)).into(),
                )
            }
            Err(e) => return Err(corrupt(path, 0, e.to_string()).into()),
        };
        if let Some(e) = expected {
            if header.first_lsn != e {
                return Err(corrupt(
                    path,
                    0,
                    format!(
                        "segment starts at LSN {}, but the log before it ends at LSN {}",
                        header.first_lsn,
                        e.saturating_sub(1)
                    ),
                )
                .into());
            }
        }
        // The log goes on past any tear in an earlier segment (a restart began this one): only
        // a tear in the last segment is the end of the log.
        out.tail = Tail::Clean;
        let mut next = header.first_lsn;
        let mut offset = SEGMENT_HEADER_BYTES;
        let mut last_lsn = None;
        loop {
            match read_frame(&data, offset, next) {
                Frame::Valid(h) => {
                    let payload = &data[offset + frame::RECORD_HEADER_BYTES..][..h.len];
                    visit(&h, payload, path, offset as u64).map_err(ScanFailure::Visit)?;
                    out.records += 1;
                    last_lsn = Some(h.lsn);
                    next += 1;
                    offset += h.frame_len();
                }
                Frame::End => break,
                Frame::Bad(detail) => {
                    if let Some(proof) = durable_after(&data, offset, next) {
                        return Err(corrupt(
                            path,
                            offset as u64,
                            format!(
                                "{detail} (expected LSN {next}); the record at offset {proof} was written after LSN {next} was durable"
                            ),
                        )
                        .into());
                    }
                    out.tail = Tail::Torn {
                        segment: path.clone(),
                        offset: offset as u64,
                        detail,
                    };
                    break;
                }
            }
        }
        out.segments.push(SegmentInfo {
            seq: *seq,
            path: path.clone(),
            last_lsn,
            used_bytes: offset as u64,
            first_lsn: header.first_lsn,
        });
        expected = Some(next);
        out.next_lsn = next;
    }
    Ok(out)
}

fn corrupt(path: &Path, offset: u64, detail: String) -> ScanError {
    ScanError::Corrupt {
        segment: path.to_path_buf(),
        offset,
        detail,
    }
}

enum Frame {
    Valid(RecordHeader),
    /// Zeros, a stale record from a recycled segment, or the end of the file.
    End,
    /// Something that is neither a valid next record nor a clean end.
    Bad(String),
}

fn read_frame(data: &[u8], offset: usize, expected: u64) -> Frame {
    let Some(rest) = data.get(offset..) else {
        return Frame::End;
    };
    if rest.len() < frame::RECORD_HEADER_BYTES {
        return if rest.iter().all(|b| *b == 0) {
            Frame::End
        } else {
            Frame::Bad("a record header cut short by the end of the segment".into())
        };
    }
    let head = &rest[..frame::RECORD_HEADER_BYTES];
    let Some(h) = frame::parse_header(head) else {
        return if head.iter().all(|b| *b == 0) {
            Frame::End
        } else {
            Frame::Bad("a record header fails its checksum".into())
        };
    };
    if h.lsn < expected {
        return Frame::End; // an older incarnation of a recycled segment
    }
    if h.lsn != expected {
        return Frame::Bad(format!(
            "a record with LSN {} where {expected} was due",
            h.lsn
        ));
    }
    if rest.len() < h.frame_len() {
        return Frame::Bad("a record cut short by the end of the segment".into());
    }
    let payload = &rest[frame::RECORD_HEADER_BYTES..][..h.len];
    if !frame::payload_ok(&h, payload) {
        return Frame::Bad(format!("record LSN {} fails its payload checksum", h.lsn));
    }
    Frame::Valid(h)
}

/// The offset of a valid record after `offset` that was written once LSN `expected` was already
/// durable, if there is one: proof that the damage at `offset` hit synced data.
fn durable_after(data: &[u8], offset: usize, expected: u64) -> Option<usize> {
    let mut at = offset + frame::ALIGN;
    while at + frame::RECORD_HEADER_BYTES <= data.len() {
        // Zeros (a preallocated region) cannot start a record: skip them a word at a time.
        if data[at..at + 8].iter().all(|b| *b == 0) {
            at += frame::ALIGN;
            continue;
        }
        if let Some(h) = frame::parse_header(&data[at..]) {
            if h.lsn >= expected && h.synced >= expected && at + h.frame_len() <= data.len() {
                let payload = &data[at + frame::RECORD_HEADER_BYTES..][..h.len];
                if frame::payload_ok(&h, payload) {
                    return Some(at);
                }
            }
            if h.lsn < expected {
                // A whole record of an older incarnation: jump over it.
                at += h.frame_len();
                continue;
            }
        }
        at += frame::ALIGN;
    }
    None
}

/// Records of the log that the shards must not replay: each `Abort` names a redo record whose
/// commit failed after it was logged.
pub fn aborted(h: &RecordHeader, payload: &[u8]) -> Option<(u32, u64)> {
    if h.kind != Kind::Abort || payload.len() != 8 {
        return None;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(payload);
    Some((h.shard, u64::from_le_bytes(b)))
}
