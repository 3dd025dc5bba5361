//! Notes: what an operation means to a user, recorded in its batch's redo before the physical
//! ops it makes ([`crate::engine::redo`], op 5). A domain writes one per operation through
//! [`crate::engine::writer::ApplyCtx::note`]; its feed decoder reads it back with those ops.
//!
//! ```text
//! 0  domain u8      0 = the batch itself, else a domain's feed id (FeedSpec::domain)
//! 1  verb u8        the domain's own numbering
//! 2  arguments      written with NoteBuf: u8, u64 LE, str (u16 length + UTF-8)
//! ```
//!
//! The batch's own note (domain 0, verb 0) carries its time (`at_ms` u64), first in every record.

/// The batch's own note domain.
pub const BATCH: u8 = 0;

/// The note that opens every record: the batch's time.
pub fn batch_time(at_ms: u64) -> [u8; 10] {
    let mut b = [0u8; 10];
    b[0] = BATCH;
    b[1] = 0;
    b[2..].copy_from_slice(&at_ms.to_le_bytes());
    b
}

/// Builds a note.
pub struct NoteBuf(Vec<u8>);

impl NoteBuf {
    pub fn new(domain: u8, verb: u8) -> NoteBuf {
        let mut v = Vec::with_capacity(16);
        v.push(domain);
        v.push(verb);
        NoteBuf(v)
    }

    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }

    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A string, cut at 4 KiB (notes name things; what they name is in the physical ops).
    pub fn str(mut self, s: &str) -> Self {
        let mut end = s.len().min(4096);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.0.extend_from_slice(&(end as u16).to_le_bytes());
        self.0.extend_from_slice(&s.as_bytes()[..end]);
        self
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Reads a note back.
#[derive(Debug, Clone, Copy)]
pub struct Note<'a> {
    pub domain: u8,
    pub verb: u8,
    rest: &'a [u8],
}

impl<'a> Note<'a> {
    /// The note in `bytes`, `None` when it is too short to name a domain and verb.
    pub fn parse(bytes: &'a [u8]) -> Option<Note<'a>> {
        match bytes {
            [domain, verb, rest @ ..] => Some(Note {
                domain: *domain,
                verb: *verb,
                rest,
            }),
            _ => None,
        }
    }

    /// Its arguments, in the order they were written.
    pub fn args(&self) -> Args<'a> {
        Args(self.rest)
    }
}

/// A note's arguments being read; each read is `None` past their end.
#[derive(Debug, Clone, Copy)]
pub struct Args<'a>(&'a [u8]);

impl<'a> Args<'a> {
    pub fn u8(&mut self) -> Option<u8> {
        let (v, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*v)
    }

    pub fn u64(&mut self) -> Option<u64> {
        let b = self.0.get(..8)?;
        self.0 = &self.0[8..];
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }

    pub fn str(&mut self) -> Option<&'a str> {
        let n = u16::from_le_bytes(self.0.get(..2)?.try_into().ok()?) as usize;
        let s = self.0.get(2..2 + n)?;
        self.0 = &self.0[2 + n..];
        std::str::from_utf8(s).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_read_back_what_was_written() {
        let n = NoteBuf::new(2, 7).u8(3).u64(1 << 40).str("q/é").str("");
        let note = Note::parse(n.bytes()).unwrap();
        assert_eq!((note.domain, note.verb), (2, 7));
        let mut a = note.args();
        assert_eq!(a.u8(), Some(3));
        assert_eq!(a.u64(), Some(1 << 40));
        assert_eq!(a.str(), Some("q/é"));
        assert_eq!(a.str(), Some(""));
        assert_eq!(a.u8(), None);
        let t = batch_time(1234);
        let note = Note::parse(&t).unwrap();
        assert_eq!((note.domain, note.args().u64()), (BATCH, Some(1234)));
        assert!(Note::parse(&[1]).is_none());
    }

    #[test]
    fn long_strings_are_cut_on_a_character_boundary() {
        let s = "é".repeat(3000);
        let n = NoteBuf::new(1, 1).str(&s);
        let got = Note::parse(n.bytes()).unwrap().args().str().unwrap();
        assert!(got.len() <= 4096 && s.starts_with(got));
    }
}
