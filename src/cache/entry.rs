//! A cache entry and its explicit byte encoding for foyer's disk tier.
//!
//! foyer has no TTL, so every time bound lives in the entry and is checked on each read. The
//! generations an entry was written under are in the entry too: an entry whose namespace or any
//! of whose tags has been purged since (a higher generation) is a miss.

use bytes::Bytes;
use std::io::{Read, Write};

/// Encoding version of [`Entry`] on the disk tier.
const ENTRY_VERSION: u8 = 1;

/// One cached value with its time bounds, tags and generations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Bytes,
    pub content_type: Option<String>,
    pub stored_at_ms: u64,
    /// Fresh before this time.
    pub expires_at_ms: u64,
    /// Served stale (while one caller refreshes) before this time.
    pub stale_until_ms: u64,
    /// Served stale after a reported refresh failure before this time.
    pub stale_if_error_until_ms: u64,
    /// The namespace generation at write time.
    pub ns_generation: u64,
    /// Each tag with its generation at write time.
    pub tags: Vec<(String, u64)>,
    /// How long the fill that produced this entry took (lease grant → PUT), 0 when unknown.
    /// XFetch uses it as the expected recompute time.
    pub fill_ms: u64,
    /// A refresh was reported failed (`:fillError`): serve stale until `stale_if_error_until_ms`.
    pub refresh_failed: bool,
}

/// Bytes of bookkeeping counted per entry besides key, value, content type and tags.
pub const ENTRY_OVERHEAD_BYTES: usize = 96;

impl Entry {
    /// What the entry weighs in the memory tier.
    pub fn weight(&self) -> usize {
        ENTRY_OVERHEAD_BYTES
            + self.value.len()
            + self.content_type.as_ref().map_or(0, |c| c.len())
            + self.tags.iter().map(|(t, _)| t.len() + 8).sum::<usize>()
    }

    /// The time after which the entry can never be served again.
    pub fn dead_at_ms(&self) -> u64 {
        self.expires_at_ms
            .max(self.stale_until_ms)
            .max(self.stale_if_error_until_ms)
    }

    fn encoded_len(&self) -> usize {
        1 + 6 * 8
            + 1
            + self.content_type.as_ref().map_or(0, |c| 2 + c.len())
            + 2
            + self
                .tags
                .iter()
                .map(|(t, _)| 2 + t.len() + 8)
                .sum::<usize>()
            + 4
            + self.value.len()
    }
}

fn io_err(message: &str) -> foyer::Error {
    foyer::Error::io_error(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        message.to_string(),
    ))
}

fn read_u64(r: &mut impl Read) -> foyer::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).map_err(foyer::Error::io_error)?;
    Ok(u64::from_le_bytes(b))
}

fn read_u16(r: &mut impl Read) -> foyer::Result<u16> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b).map_err(foyer::Error::io_error)?;
    Ok(u16::from_le_bytes(b))
}

fn read_string(r: &mut impl Read, len: usize) -> foyer::Result<String> {
    let mut b = vec![0u8; len];
    r.read_exact(&mut b).map_err(foyer::Error::io_error)?;
    String::from_utf8(b).map_err(|_| io_err("cache entry: string is not UTF-8"))
}

/// Layout (little endian): version u8, stored_at, expires_at, stale_until, stale_if_error_until,
/// ns_generation, fill_ms (u64 each), flags u8 (bit 0 refresh_failed, bit 1 has content type),
/// [content type: u16 len + bytes], tag count u16, tags (u16 len + bytes + u64 generation),
/// value: u32 len + bytes.
impl foyer::Code for Entry {
    fn encode(&self, w: &mut impl Write) -> foyer::Result<()> {
        // Header fields into one small buffer, the value straight to the writer: no
        // copy of the value per disk write.
        let mut head = Vec::with_capacity(self.encoded_len() - self.value.len());
        head.push(ENTRY_VERSION);
        for v in [
            self.stored_at_ms,
            self.expires_at_ms,
            self.stale_until_ms,
            self.stale_if_error_until_ms,
            self.ns_generation,
            self.fill_ms,
        ] {
            head.extend_from_slice(&v.to_le_bytes());
        }
        let flags = u8::from(self.refresh_failed) | (u8::from(self.content_type.is_some()) << 1);
        head.push(flags);
        if let Some(ct) = &self.content_type {
            head.extend_from_slice(&(ct.len() as u16).to_le_bytes());
            head.extend_from_slice(ct.as_bytes());
        }
        head.extend_from_slice(&(self.tags.len() as u16).to_le_bytes());
        for (tag, generation) in &self.tags {
            head.extend_from_slice(&(tag.len() as u16).to_le_bytes());
            head.extend_from_slice(tag.as_bytes());
            head.extend_from_slice(&generation.to_le_bytes());
        }
        head.extend_from_slice(&(self.value.len() as u32).to_le_bytes());
        w.write_all(&head).map_err(foyer::Error::io_error)?;
        w.write_all(&self.value).map_err(foyer::Error::io_error)
    }

    fn decode(r: &mut impl Read) -> foyer::Result<Self> {
        let mut version = [0u8; 1];
        r.read_exact(&mut version).map_err(foyer::Error::io_error)?;
        if version[0] != ENTRY_VERSION {
            return Err(io_err("cache entry: unknown encoding version"));
        }
        let stored_at_ms = read_u64(r)?;
        let expires_at_ms = read_u64(r)?;
        let stale_until_ms = read_u64(r)?;
        let stale_if_error_until_ms = read_u64(r)?;
        let ns_generation = read_u64(r)?;
        let fill_ms = read_u64(r)?;
        let mut flags = [0u8; 1];
        r.read_exact(&mut flags).map_err(foyer::Error::io_error)?;
        // Undefined bits mean damage or a newer format: a miss, never a guess (found by the
        // `records` fuzz target).
        if flags[0] & !0b11 != 0 {
            return Err(io_err("cache entry: unknown flag bits"));
        }
        let content_type = if flags[0] & 2 != 0 {
            let n = read_u16(r)? as usize;
            Some(read_string(r, n)?)
        } else {
            None
        };
        let tag_count = read_u16(r)? as usize;
        let mut tags = Vec::with_capacity(tag_count.min(1024));
        for _ in 0..tag_count {
            let n = read_u16(r)? as usize;
            let tag = read_string(r, n)?;
            tags.push((tag, read_u64(r)?));
        }
        let mut len = [0u8; 4];
        r.read_exact(&mut len).map_err(foyer::Error::io_error)?;
        let mut value = vec![0u8; u32::from_le_bytes(len) as usize];
        r.read_exact(&mut value).map_err(foyer::Error::io_error)?;
        Ok(Entry {
            value: Bytes::from(value),
            content_type,
            stored_at_ms,
            expires_at_ms,
            stale_until_ms,
            stale_if_error_until_ms,
            ns_generation,
            tags,
            fill_ms,
            refresh_failed: flags[0] & 1 != 0,
        })
    }

    fn estimated_size(&self) -> usize {
        self.encoded_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foyer::Code;

    #[test]
    fn entry_round_trips_and_rejects_garbage() {
        let e = Entry {
            value: Bytes::from_static(b"hello"),
            content_type: Some("text/plain".into()),
            stored_at_ms: 1,
            expires_at_ms: 2,
            stale_until_ms: 3,
            stale_if_error_until_ms: 4,
            ns_generation: 5,
            tags: vec![("a".into(), 7), ("bb".into(), 0)],
            fill_ms: 9,
            refresh_failed: true,
        };
        let mut buf = Vec::new();
        e.encode(&mut buf).unwrap();
        assert_eq!(buf.len(), e.estimated_size());
        let back = Entry::decode(&mut buf.as_slice()).unwrap();
        assert_eq!(back, e);
        buf[0] = 99;
        assert!(Entry::decode(&mut buf.as_slice()).is_err());
        assert!(Entry::decode(&mut &buf[..10]).is_err());
    }
}
