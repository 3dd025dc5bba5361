//! Where a change sits: `(generation, LSN, index)`.
//!
//! The generation is a random id of the store's history, kept in `<data>/GENERATION`. It is made
//! with the data directory and made anew whenever the history is not continuous — a restore, an
//! import, a directory rebuilt from elsewhere — so a position from before can never be taken
//! for one of the new history (Litestream's generations, Redis's replication id).

use std::path::Path;

/// A store's history id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Generation(pub u64);

/// The file that holds it.
pub const GENERATION_FILE: &str = "GENERATION";

impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for Generation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() != 16 {
            return Err(format!("a generation is 16 hex digits, got `{s}`"));
        }
        u64::from_str_radix(s, 16)
            .map(Generation)
            .map_err(|_| format!("a generation is 16 hex digits, got `{s}`"))
    }
}

impl Generation {
    /// A new random generation.
    pub fn fresh() -> Generation {
        Generation(rand::random::<u64>().max(1))
    }

    /// The generation of the data directory `dir`, made (durably) when it has none.
    pub fn load_or_create(dir: &Path) -> std::io::Result<Generation> {
        let path = dir.join(GENERATION_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().map_err(|e: String| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::renew(dir),
            Err(e) => Err(e),
        }
    }

    /// Gives `dir` a new generation (its history is no longer continuous): written to a
    /// temporary file, synced, renamed over the old one, the directory synced.
    pub fn renew(dir: &Path) -> std::io::Result<Generation> {
        let g = Generation::fresh();
        Lineage::store(dir, None)?;
        g.store(dir)?;
        Ok(g)
    }

    /// Makes `self` the generation of `dir` (durably).
    pub fn store(self, dir: &Path) -> std::io::Result<()> {
        crate::engine::private::write_synced(dir, GENERATION_FILE, &format!("{self}\n"))
    }
}

/// The store's generation as it is now: fixed while the store runs, except that a standby's
/// promotion starts a new one (`store::follow`). Shared by the feed and its cursors.
#[derive(Debug)]
pub struct GenerationCell(std::sync::atomic::AtomicU64);

impl GenerationCell {
    pub fn new(g: Generation) -> GenerationCell {
        GenerationCell(std::sync::atomic::AtomicU64::new(g.0))
    }
    pub fn get(&self) -> Generation {
        Generation(self.0.load(std::sync::atomic::Ordering::Acquire))
    }
    pub(crate) fn set(&self, g: Generation) {
        self.0.store(g.0, std::sync::atomic::Ordering::Release);
    }
}

/// Where a generation came from: the generation before it and the last record they share. A
/// box restored from the hub, or a standby promoted, continues its predecessor's history up to
/// that record, so the streams its predecessor fed can be continued from there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lineage {
    pub previous: Generation,
    pub through_lsn: u64,
}

/// The file that holds a generation's [`Lineage`] (`<previous> <through_lsn>`), when it has one.
pub const LINEAGE_FILE: &str = "LINEAGE";

impl Lineage {
    /// The lineage recorded in `dir`, if any (a file that does not parse is none).
    pub fn load(dir: &Path) -> Option<Lineage> {
        let text = std::fs::read_to_string(dir.join(LINEAGE_FILE)).ok()?;
        let (g, l) = text.trim().split_once(' ')?;
        Some(Lineage {
            previous: g.parse().ok()?,
            through_lsn: l.parse().ok()?,
        })
    }

    /// Records `lineage` (or removes any) for `dir`'s generation, durably.
    pub fn store(dir: &Path, lineage: Option<Lineage>) -> std::io::Result<()> {
        let path = dir.join(LINEAGE_FILE);
        match lineage {
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            Some(l) => crate::engine::private::write_synced(dir, LINEAGE_FILE, &format!("{} {}\n", l.previous, l.through_lsn)),
        }
    }
}

/// A change's place: the record's LSN and the change's index within the record, in one
/// generation. Positions order by `(lsn, index)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    pub generation: Generation,
    pub lsn: u64,
    /// The change's index within its record; [`Position::WHOLE_RECORD`] for "after every change
    /// of record `lsn`" (the form `generation:lsn`).
    pub index: u32,
}

impl Position {
    /// The index that stands for a whole record.
    pub const WHOLE_RECORD: u32 = u32::MAX;

    /// After every change of record `lsn`.
    pub fn after_record(generation: Generation, lsn: u64) -> Position {
        Position {
            generation,
            lsn,
            index: Self::WHOLE_RECORD,
        }
    }

    /// The first record a reader at this position still needs: the next one after a whole
    /// record, its own record when it stopped inside one.
    pub fn first_needed(&self) -> u64 {
        if self.index == Self::WHOLE_RECORD {
            self.lsn.saturating_add(1)
        } else {
            self.lsn
        }
    }

    /// Whether a change at `(lsn, index)` comes after this position.
    pub fn is_before(&self, lsn: u64, index: u32) -> bool {
        (lsn, index) > (self.lsn, self.index)
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.index == Self::WHOLE_RECORD {
            write!(f, "{}:{}", self.generation, self.lsn)
        } else {
            write!(f, "{}:{}:{}", self.generation, self.lsn, self.index)
        }
    }
}

impl std::str::FromStr for Position {
    type Err = String;
    /// `generation:lsn:index`, or `generation:lsn` for after the whole record.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("a position is `<generation>:<lsn>:<index>` (or `<generation>:<lsn>`), got `{s}`")
        };
        let mut parts = s.split(':');
        let generation = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let lsn = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let index = match parts.next() {
            None => Self::WHOLE_RECORD,
            Some(i) => i
                .parse::<u32>()
                .ok()
                .filter(|i| *i != Self::WHOLE_RECORD)
                .ok_or_else(bad)?,
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Position {
            generation,
            lsn,
            index,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_read_back_and_order() {
        let g = Generation(0xabcdef0123456789);
        let p = Position {
            generation: g,
            lsn: 42,
            index: 3,
        };
        assert_eq!(p.to_string(), "abcdef0123456789:42:3");
        assert_eq!("abcdef0123456789:42:3".parse::<Position>(), Ok(p));
        let whole: Position = "abcdef0123456789:42".parse().unwrap();
        assert_eq!(whole, Position::after_record(g, 42));
        assert_eq!(whole.to_string(), "abcdef0123456789:42");
        assert!(p.is_before(42, 4) && p.is_before(43, 0) && !p.is_before(42, 3));
        assert!(whole.is_before(43, 0) && !whole.is_before(42, 1000));
        for bad in ["", "x:1:2", "abcdef0123456789", "abcdef0123456789:1:2:3", "abcdef0123456789:-1", "abcdef0123456789:1:4294967295"] {
            assert!(bad.parse::<Position>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_generation_is_kept_and_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let a = Generation::load_or_create(dir.path()).unwrap();
        assert_eq!(Generation::load_or_create(dir.path()).unwrap(), a);
        let b = Generation::renew(dir.path()).unwrap();
        assert_ne!(a, b);
        assert_eq!(Generation::load_or_create(dir.path()).unwrap(), b);
    }
}
