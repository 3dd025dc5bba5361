//! Holds on the log: what keeps the log's segments from being recycled for the feed's readers.
//!
//! A named cursor (a replication slot) and a reader that is streaming each hold the first LSN
//! they still need. The log recycles a segment only when every shard has checkpointed past it
//! **and** no hold needs it — up to a bound: when the segments kept for holds alone pass
//! `feed_retain_bytes_max`, the holds that keep the oldest of them are dropped, and their
//! readers must start again from a snapshot (`resnapshot_required`). Writes never wait for a
//! reader.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A hold's number.
pub type HoldId = u64;

#[derive(Debug, Clone)]
struct Hold {
    /// The first LSN it still needs.
    lsn: u64,
    /// Dropped past the bound: its reader must resnapshot.
    dropped: bool,
}

/// Every hold on the log.
#[derive(Debug, Default)]
pub struct Holds {
    inner: Mutex<Inner>,
    /// The lowest LSN a live hold needs (`u64::MAX`: none), read by the log as it recycles.
    min: AtomicU64,
    /// Holds dropped past the bound since start.
    pub dropped_total: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    next: HoldId,
    holds: BTreeMap<HoldId, Hold>,
}

impl Holds {
    pub fn new() -> Holds {
        Holds {
            min: AtomicU64::new(u64::MAX),
            ..Default::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refresh(&self, g: &Inner) {
        let min = g
            .holds
            .values()
            .filter(|h| !h.dropped)
            .map(|h| h.lsn)
            .min()
            .unwrap_or(u64::MAX);
        self.min.store(min, Ordering::Release);
    }

    /// A new hold needing every record from `lsn` on.
    pub fn add(&self, lsn: u64) -> HoldId {
        let mut g = self.lock();
        g.next += 1;
        let id = g.next;
        g.holds.insert(id, Hold { lsn, dropped: false });
        self.refresh(&g);
        id
    }

    /// Moves a hold forward (never back: a record it released may be gone). False when the
    /// hold was dropped past the bound (or released).
    pub fn advance(&self, id: HoldId, lsn: u64) -> bool {
        let mut g = self.lock();
        let live = match g.holds.get_mut(&id) {
            Some(h) if !h.dropped => {
                h.lsn = h.lsn.max(lsn);
                true
            }
            _ => false,
        };
        self.refresh(&g);
        live
    }

    /// Whether the hold still keeps its records (false once dropped past the bound).
    pub fn is_live(&self, id: HoldId) -> bool {
        self.lock().holds.get(&id).is_some_and(|h| !h.dropped)
    }

    pub fn release(&self, id: HoldId) {
        let mut g = self.lock();
        g.holds.remove(&id);
        self.refresh(&g);
    }

    /// The lowest LSN a live hold needs (`u64::MAX`: none).
    pub fn min_lsn(&self) -> u64 {
        self.min.load(Ordering::Acquire)
    }

    /// Drops every live hold needing a record before `lsn` (the log will not keep them);
    /// returns how many.
    pub fn drop_before(&self, lsn: u64) -> usize {
        let mut g = self.lock();
        let mut n = 0;
        for h in g.holds.values_mut() {
            if !h.dropped && h.lsn < lsn {
                h.dropped = true;
                n += 1;
            }
        }
        self.refresh(&g);
        self.dropped_total.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Live holds.
    pub fn live(&self) -> usize {
        self.lock().holds.values().filter(|h| !h.dropped).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_keep_the_lowest_and_drop_past_a_cut() {
        let h = Holds::new();
        assert_eq!(h.min_lsn(), u64::MAX);
        let a = h.add(10);
        let b = h.add(50);
        assert_eq!(h.min_lsn(), 10);
        assert!(h.advance(a, 60));
        assert!(h.advance(a, 5), "never moves back");
        assert_eq!(h.min_lsn(), 50);
        assert_eq!(h.drop_before(55), 1);
        assert!(!h.is_live(b) && h.is_live(a));
        assert!(!h.advance(b, 100), "a dropped hold stays dropped");
        assert_eq!(h.min_lsn(), 60);
        h.release(a);
        assert_eq!(h.min_lsn(), u64::MAX);
    }
}
