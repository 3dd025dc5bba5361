//! Named feed cursors: a consumer's position, kept across restarts, that holds the log's
//! segments it has not read yet (a replication slot) — up to `feed_retain_bytes_max`, past
//! which the cursor is dropped to `resnapshot_required`.
//!
//! They live in `<data>/feed-cursors` (one `name position` line each, rewritten whole: a
//! temporary file, synced, renamed). A cursor of another generation (the store was restored or
//! imported since) loads as `resnapshot_required`.

use super::holds::{HoldId, Holds};
use super::{FeedError, Position};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The cursors file in a data directory.
pub const CURSORS_FILE: &str = "feed-cursors";

/// A cursor as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CursorInfo {
    pub name: String,
    /// Where its consumer has read to (the next read starts after it).
    pub position: String,
    /// `active`, or `resnapshot_required` once the log let go of what it needed.
    pub state: &'static str,
}

#[derive(Debug, Clone)]
struct Cursor {
    position: Position,
    hold: Option<HoldId>,
}

/// Every named cursor of a store.
pub struct Cursors {
    path: PathBuf,
    generation: Arc<super::position::GenerationCell>,
    holds: Arc<Holds>,
    max: usize,
    inner: Mutex<BTreeMap<String, Cursor>>,
}

impl Cursors {
    /// Loads the cursors of `dir` and takes their holds (before the log starts, so it keeps
    /// what they need).
    pub fn load(
        dir: &Path,
        generation: Arc<super::position::GenerationCell>,
        holds: Arc<Holds>,
        max: usize,
    ) -> std::io::Result<Cursors> {
        let path = dir.join(CURSORS_FILE);
        let mut map = BTreeMap::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    let Some((name, pos)) = line.rsplit_once(' ') else {
                        continue;
                    };
                    let Ok(position) = pos.parse::<Position>() else {
                        continue;
                    };
                    let hold = (position.generation == generation.get())
                        .then(|| holds.add(position.first_needed()));
                    map.insert(name.to_string(), Cursor { position, hold });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Cursors {
            path,
            generation,
            holds,
            max,
            inner: Mutex::new(map),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Cursor>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, map: &BTreeMap<String, Cursor>) -> Result<(), FeedError> {
        let mut text = String::new();
        for (name, c) in map {
            text.push_str(&format!("{name} {}\n", c.position));
        }
        let tmp = self.path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = crate::engine::private::create_file(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| FeedError::Log(format!("{}: {e}", self.path.display())))
    }

    fn live(&self, c: &Cursor) -> bool {
        c.hold.is_some_and(|h| self.holds.is_live(h))
    }

    /// Creates `name` at `position`, or moves it there (forward only: what it passed may be
    /// gone). `oldest` is the oldest position the log still holds.
    pub fn set(
        &self,
        name: &str,
        position: Position,
        oldest: Option<Position>,
    ) -> Result<bool, FeedError> {
        if position.generation != self.generation.get() {
            return Err(FeedError::OtherGeneration {
                ours: self.generation.get(),
            });
        }
        let mut map = self.lock();
        let created = !map.contains_key(name);
        if created && map.len() >= self.max {
            return Err(FeedError::Invalid(format!(
                "there are {} cursors already (feed_cursors_max): delete one first",
                map.len()
            )));
        }
        // The file is written first and the cursor changed only once it is: a failed save
        // leaves the cursor (and its hold) as it was.
        let mut next = map.clone();
        match map.get(name) {
            Some(c) if self.live(c) => {
                if (position.lsn, position.index) < (c.position.lsn, c.position.index) {
                    return Err(FeedError::Invalid(format!(
                        "a cursor moves forward only: `{name}` is at {}",
                        c.position
                    )));
                }
                next.insert(
                    name.to_string(),
                    Cursor {
                        position,
                        hold: c.hold,
                    },
                );
                self.save(&next)?;
                if let Some(h) = c.hold {
                    self.holds.advance(h, position.first_needed());
                }
            }
            existing => {
                // New, or starting over after being dropped: the log must still hold it.
                if oldest.is_some_and(|o| position.first_needed() < o.first_needed()) {
                    return Err(FeedError::Gone { oldest });
                }
                // Held before the save, so nothing it needs is recycled meanwhile.
                let hold = self.holds.add(position.first_needed());
                next.insert(
                    name.to_string(),
                    Cursor {
                        position,
                        hold: Some(hold),
                    },
                );
                if let Err(e) = self.save(&next) {
                    self.holds.release(hold);
                    return Err(e);
                }
                if let Some(old) = existing.and_then(|c| c.hold) {
                    self.holds.release(old);
                }
            }
        }
        *map = next;
        Ok(created)
    }

    /// Where `name` is; 410 once it was dropped past the bound or the store's history changed.
    pub fn position(&self, name: &str, oldest: Option<Position>) -> Result<Position, FeedError> {
        let map = self.lock();
        let c = map
            .get(name)
            .ok_or_else(|| FeedError::NoSuchCursor(name.to_string()))?;
        if c.position.generation != self.generation.get() {
            return Err(FeedError::OtherGeneration {
                ours: self.generation.get(),
            });
        }
        if !self.live(c) {
            return Err(FeedError::Gone { oldest });
        }
        Ok(c.position)
    }

    pub fn delete(&self, name: &str) -> Result<bool, FeedError> {
        let mut map = self.lock();
        let mut next = map.clone();
        let Some(c) = next.remove(name) else {
            return Ok(false);
        };
        // Gone from the file first: a failed save keeps the cursor and its hold.
        self.save(&next)?;
        if let Some(h) = c.hold {
            self.holds.release(h);
        }
        *map = next;
        Ok(true)
    }

    /// Once the log is open: a cursor whose records the log no longer has (dropped past the
    /// bound before a restart, its segments recycled since) lets go of its hold and reads as
    /// `resnapshot_required`, instead of holding the log for records that are gone.
    pub fn forget_gone(&self, oldest_lsn: Option<u64>) {
        let Some(oldest) = oldest_lsn else { return };
        let mut map = self.lock();
        for c in map.values_mut() {
            if c.position.first_needed() < oldest {
                if let Some(h) = c.hold.take() {
                    self.holds.release(h);
                }
            }
        }
    }

    pub fn list(&self) -> Vec<CursorInfo> {
        let map = self.lock();
        map.iter()
            .map(|(name, c)| CursorInfo {
                name: name.clone(),
                position: c.position.to_string(),
                state: if c.position.generation == self.generation.get() && self.live(c) {
                    "active"
                } else {
                    "resnapshot_required"
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::position::GenerationCell;
    use super::super::Generation;
    use super::*;

    fn cell(g: Generation) -> Arc<GenerationCell> {
        Arc::new(GenerationCell::new(g))
    }

    #[test]
    fn cursors_persist_hold_and_move_forward() {
        let dir = tempfile::tempdir().unwrap();
        let g = Generation(7);
        let holds = Arc::new(Holds::new());
        let c = Cursors::load(dir.path(), cell(g), holds.clone(), 2).unwrap();
        let at = |lsn| Position::after_record(g, lsn);
        assert!(c.set("a", at(10), None).unwrap());
        assert!(!c.set("a", at(12), None).unwrap());
        assert!(matches!(c.set("a", at(11), None), Err(FeedError::Invalid(_))));
        assert!(c.set("b", at(20), None).unwrap());
        assert!(matches!(c.set("c", at(1), None), Err(FeedError::Invalid(_))));
        assert_eq!(holds.min_lsn(), 13);
        assert!(matches!(
            c.set("x", Position::after_record(Generation(8), 1), None),
            Err(FeedError::OtherGeneration { .. })
        ));
        // Reloaded: the same positions and holds.
        let holds2 = Arc::new(Holds::new());
        let c2 = Cursors::load(dir.path(), cell(g), holds2.clone(), 8).unwrap();
        assert_eq!(c2.position("a", None).unwrap(), at(12));
        assert_eq!(holds2.min_lsn(), 13);
        // Dropped past the bound: 410, and listed so.
        holds2.drop_before(15);
        assert!(matches!(c2.position("a", None), Err(FeedError::Gone { .. })));
        assert_eq!(c2.list()[0].state, "resnapshot_required");
        // Another generation since: every cursor must resnapshot.
        let c3 = Cursors::load(dir.path(), cell(Generation(9)), Arc::new(Holds::new()), 8).unwrap();
        assert!(c3.list().iter().all(|i| i.state == "resnapshot_required"));
        assert!(c2.delete("a").unwrap() && !c2.delete("a").unwrap());
        assert!(matches!(c2.position("a", None), Err(FeedError::NoSuchCursor(_))));
    }
}
